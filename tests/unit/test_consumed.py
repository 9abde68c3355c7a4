"""The seen-set: every consumed item kept as a 4-byte hash, bounded, and used as a filter."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from app.contract.records import Purchase, View
from app.core import consumed
from app.core.recommender import Popularity, Recommender, Request, UserView
from app.core.state import EventContext, UserState, apply_batch, event_fold
from tests.unit.test_recommender import VECTORS, catalogue

pytestmark = pytest.mark.unit


def test_items_are_added_once_in_order_and_the_oldest_go_first() -> None:
    held = consumed.add(b"", ["a", "b", "a", "c"])
    assert consumed.size(held) == 3
    assert consumed.add(held, ["b"]) == held               # already there: unchanged
    assert consumed.contains(held, ["c", "d", "a"]).tolist() == [True, False, True]
    bounded = consumed.add(held, ["d", "e"], limit=4)
    assert consumed.size(bounded) == 4
    assert consumed.contains(bounded, ["a", "b", "e"]).tolist() == [False, True, True]
    assert consumed.contains(b"", ["a"]).tolist() == [False]


def test_adding_one_item_is_the_same_as_the_general_path() -> None:
    """The fold adds one item per event through a fast path; adding it twice in one call
    takes the general path (duplicates collapse), which must give the same bytes."""
    rng = np.random.default_rng(7)
    for limit in (0, 1, 5, 2048):
        fast = general = b""
        for item in rng.integers(0, 12, 200):
            fast = consumed.add(fast, [f"i{item}"], limit=limit)
            general = consumed.add(general, [f"i{item}", f"i{item}"], limit=limit)
            assert fast == general


def test_the_false_positive_rate_is_what_the_docstring_states() -> None:
    """2,048 consumed ids against 1,000,000 others: CRC-32 behaves as a uniform 32-bit hash
    (expected 2048 * 1e6 / 2**32 = 0.48 false positives; similar ids never collide)."""
    held = consumed.add(b"", [f"item-{n}" for n in range(2048)])
    assert len(held) == 2048 * 4
    others = [f"item-{n}" for n in range(2048, 1_002_048)]
    assert int(consumed.contains(held, others).sum()) <= 3
    random = [f"{n:x}-{n * 7919 % 100_003}" for n in range(200_000)]
    assert int(consumed.contains(held, random).sum()) <= 2


def test_the_fold_keeps_every_item_event_beyond_the_recent_window() -> None:
    cat = catalogue()
    context = EventContext(item_vector=cat.index.vector, query_vectors={}, dimension=4)
    events = [View(v=1, event_id=f"e{i}", user_id="u", ts=i, item_id=f"item-{i}")
              for i in range(300)]
    events.append(Purchase(v=1, event_id="p", user_id="u", ts=301, item_id="item-0",
                           price=1.0))
    state = apply_batch(UserState(), events, 128, event_fold(context)).state
    assert len(state.recent) == 50
    assert consumed.size(state.consumed) == 300
    assert consumed.contains(state.consumed, ["item-0", "item-299", "item-300"]).tolist() \
        == [True, True, False]


def test_lists_never_hold_a_consumed_item_however_old() -> None:
    """A user whose old history is popular and co-visited: nothing they consumed comes back,
    and the lists are still full (each source asked for more than it loses)."""
    rec = Recommender(catalogue(), per_source=2)
    for n, item in enumerate(["alien", "aliens", "predator", "titanic", "cars"]):
        rec.popularity.add(item, 10.0 - n, 0)
    rec.covisit.observe(["titanic"], "notebook", 1.0)
    history = consumed.add(b"", ["alien", "aliens", "predator"])   # long ago: not recent
    user = UserView(interest=VECTORS["alien"], recent=[("titanic", "view", 1.0)],
                    purchased=set(), consumed=history)
    items, _ = rec.recommend(user, Request(k=3), now=0)
    shown = [i.item_id for i in items]
    assert not {"alien", "aliens", "predator", "titanic"} & set(shown)
    assert len(shown) == 3
    reminders, _ = rec.recommend(user, Request(k=3, exclude_seen=False), now=0)
    assert {"alien", "aliens"} & {i.item_id for i in reminders}


def test_a_long_popular_top_is_never_asked_past_what_popularity_keeps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recommender(catalogue(), per_source=100)
    history = consumed.add(b"", [f"x{n}" for n in range(2048)])
    asked: list[int] = []
    original = Popularity.ranked

    def spy(self: Popularity, k: int) -> list[str]:
        asked.append(k)
        return original(self, k)

    monkeypatch.setattr(Popularity, "ranked", spy)
    rec.recommend(UserView(None, [], set(), consumed=history), Request(), now=0)
    assert asked
    assert max(asked) <= Popularity.TOP_KEPT
    assert np.all(np.asarray(asked) > 0)


def test_checking_hashes_against_a_sorted_array_is_set_membership() -> None:
    """Lists check candidates against the seen-set as arrays (``in_sorted``): the same
    answer as a set lookup per id, for empty sets, misses past both ends and duplicates."""
    rng = np.random.default_rng(3)
    for size in (0, 1, 7, 300):
        held_ids = [f"i{n}" for n in rng.integers(0, 500, size)]
        hashed = consumed.held(consumed.add(b"", held_ids))
        ordered = consumed.sorted_hashes(hashed)
        assert ordered.tolist() == sorted(hashed)
        asked = [f"i{n}" for n in rng.integers(0, 520, 400)]
        assert consumed.in_sorted(ordered, consumed.hashes(asked)).tolist() == \
            consumed.in_held(hashed, asked).tolist()


def test_a_views_sorted_exclusions_are_its_excluded_set() -> None:
    seen = consumed.add(b"", ["a", "b", "c"])
    user = UserView(None, [], frozenset({consumed.known_hash("z"), consumed.known_hash("a")}),
                    consumed=seen)
    purchased = {consumed.known_hash("z"), consumed.known_hash("a")}
    assert user.excluded_sorted(Request()).tolist() == sorted(consumed.held(seen) | purchased)
    assert user.excluded_sorted(Request(exclude_seen=False)).tolist() == sorted(purchased)


def test_the_graph_and_the_catalogue_keep_each_rows_facts() -> None:
    """What candidates read by row or interned id (the graph's hashes, the catalogue's
    first-seen time and category) stays each item's own through growth and row reuse."""
    from app.contract.records import ItemUpsert
    from app.core.catalogue import entry
    from app.core.covisit import CoVisitation
    from app.core.recommender import Catalogue

    graph = CoVisitation()
    names = [f"item-{n}" for n in range(300)]   # past the arrays' first size
    for before, item in itertools.pairwise(names):
        graph.observe([before], item)
    near = graph.candidates([(names[5], 1.0), (names[200], 1.0)], 10)
    ids = near.ranked_ids()
    assert near.hashes_of(ids).tolist() == consumed.hashes(near.names_of(ids)).tolist()
    shop = Catalogue(len(VECTORS["alien"]))
    for n, ts in enumerate((10, 20, 30, 40)):
        shop.upsert(entry(ItemUpsert(v=1, event_id="e", item_id=f"x{n}", ts=ts, title="t",
                                     category=f"c{n}"), VECTORS["alien"], "m"))
    shop.delete("x1")
    shop.upsert(entry(ItemUpsert(v=1, event_id="e", item_id="x9", ts=90, title="t",
                                 category="c9"),
                      VECTORS["alien"], "m"))   # (takes x1's row)
    shop.upsert(entry(ItemUpsert(v=1, event_id="e", item_id="x0", ts=99, title="t",
                                 category="c0b"),
                      VECTORS["alien"], "m"))   # (an update keeps when it was first seen)
    rows = [shop.index.row(i) or 0 for i in ("x0", "x2", "x9")]
    assert shop.added_at(np.array(rows)).tolist() == [10.0, 30.0, 90.0]
    assert shop.categories_at(rows) == ["c0b", "c2", "c9"]


def test_the_first_unconsumed_items_are_read_in_stretches_with_the_same_answer() -> None:
    from app.core.recommender import _first_unconsumed, _unconsumed
    rng = np.random.default_rng(11)
    for _ in range(200):
        ids = [f"p{n}" for n in rng.permutation(300)[:rng.integers(0, 300)]]
        held_ids = [f"p{n}" for n in rng.integers(0, 300, rng.integers(0, 400))]
        excluded = consumed.sorted_hashes(consumed.held(consumed.add(b"", held_ids)))
        k = int(rng.integers(0, 60))
        assert _first_unconsumed(excluded, ids, k) == _unconsumed(excluded, ids)[:k]
    popularity = Popularity()
    for n in range(400):
        popularity.add(f"p{n % 290}", 1.0 + n % 7, 1_000 * n)
    for k in (1, 50, 256, 300):
        assert popularity.ranked(k) == [i for i, _ in popularity.top(k, 0)]
