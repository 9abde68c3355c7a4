"""The splits of a rating stream, as the replay and the evaluation see them.

Ratings are in timestamp order, ties broken by the original row order (a stable sort).

*Leave-last-out* (the default, the published protocol): each user's last rating is their
*target*: the replay withholds it, so the recommendation a user last received before it was
computed without it (in a stream that delivered it, a burst of ratings in one batch could
let the recommendation see its own target). Everything else is the *stream*; the offline
baselines train on exactly that.

*Global time split* (:func:`time_split`): every rating before a cut time is the stream, and
each user who rated something before the cut and comes back after it has their first
rating after the cut as the target: the returning user, asked for at the cut, who may have
been away for a day or for a year. Nothing after the cut is streamed, so no model, baseline
or worker sees any user's future.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from app.contract.records import ItemUpsert, UserProfile
from app.data import interactions, movielens
from app.data.interactions import is_dataset_file


@dataclass(frozen=True, slots=True)
class Target:
    user_id: str
    item_id: str
    ts_ms: int
    prior_item_count: int  # interactions with the item earlier in the stream (cold items)


@dataclass
class Split:
    dataset: str
    stream: list[movielens.Rating]
    targets: dict[str, Target]
    history: dict[str, list[str]]                    # per user, items before the target
    items: list[str]                                 # the whole catalogue
    genres: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hidden: frozenset[str] = frozenset()             # the cold-start experiment's items
    catalogue: list[ItemUpsert] = field(default_factory=list)   # the items, at ts 0
    profiles: list[UserProfile] = field(default_factory=list)   # known users' profiles, ts 0
    cut_ms: int | None = None    # the global time split's cut (None: leave-last-out)

    @property
    def train_counts(self) -> Counter[str]:
        return Counter(r.item_id for r in self.stream)


def leave_last_out(ratings: list[movielens.Rating], items: list[str]) -> Split:
    """Split ``ratings`` (already in stream order): users with one rating have no history
    to recommend from and are left out entirely."""
    per_user = Counter(r.user_id for r in ratings)
    last_index: dict[str, int] = {}
    for index, rating in enumerate(ratings):
        last_index[rating.user_id] = index
    stream: list[movielens.Rating] = []
    targets: dict[str, Target] = {}
    history: dict[str, list[str]] = {}
    item_counts: Counter[str] = Counter()
    for index, rating in enumerate(ratings):
        user = rating.user_id
        if per_user[user] < 2:
            continue
        if last_index[user] == index:
            targets[user] = Target(user, rating.item_id, rating.ts_ms, item_counts[rating.item_id])
            continue
        item_counts[rating.item_id] += 1
        stream.append(rating)
        history.setdefault(user, []).append(rating.item_id)
    return Split("", stream, targets, history, items)


def time_split(ratings: list[movielens.Rating], items: list[str], cut: float) -> Split:
    """The global time split of ``ratings`` (in stream order) at the ``cut`` quantile of
    their times (0 < cut < 1): the ratings before the cut time are the stream; a user with
    at least one of them and a rating at or after the cut has the first such rating as
    the target (every rating is an interaction, as in leave-last-out)."""
    if not 0.0 < cut < 1.0:
        raise ValueError(f"the cut is a quantile of the ratings' times, in (0, 1): {cut}")
    cut_ms = int(np.quantile([r.ts_ms for r in ratings], cut)) if ratings else 0
    stream = [r for r in ratings if r.ts_ms < cut_ms]
    history: dict[str, list[str]] = {}
    for rating in stream:
        history.setdefault(rating.user_id, []).append(rating.item_id)
    counts = Counter(r.item_id for r in stream)
    targets: dict[str, Target] = {}
    for rating in ratings:
        if (rating.ts_ms >= cut_ms and rating.user_id in history
                and rating.user_id not in targets):
            targets[rating.user_id] = Target(rating.user_id, rating.item_id, rating.ts_ms,
                                             counts[rating.item_id])
    return Split("", stream, targets, history, items, cut_ms=cut_ms)


def hide_items(ratings: list[movielens.Rating], fraction: float, seed: int = 0,
               until: float = 0.8) -> tuple[list[movielens.Rating], frozenset[str]]:
    """The cold-start experiment: a random ``fraction`` of the rated items (seeded) loses
    every interaction before the ``until`` quantile of the stream's time, so those items
    exist in the catalogue (their text is known) but nobody has touched them until late.
    Each user's last rating is kept whatever its item (it is the target)."""
    rated = sorted({r.item_id for r in ratings})
    rng = np.random.default_rng(seed)
    hidden = frozenset(rng.choice(rated, size=round(fraction * len(rated)), replace=False)
                       .tolist()) if fraction > 0 else frozenset()
    cutoff = float(np.quantile([r.ts_ms for r in ratings], until)) if ratings else 0.0
    last = {r.user_id: n for n, r in enumerate(ratings)}
    kept = [r for n, r in enumerate(ratings)
            if r.item_id not in hidden or r.ts_ms >= cutoff or last[r.user_id] == n]
    return kept, hidden


def load(dataset: str, cold_items: float = 0.0, cut: float | None = None) -> Split:
    """The split of ``dataset`` (a MovieLens preset, ml-100k or ml-1m, or a dataset file:
    app.data.interactions): leave-last-out; with ``cold_items`` > 0, the cold-start
    experiment's; with ``cut``, the global time split at that quantile of the times."""
    if cut is not None and cold_items > 0:
        raise ValueError("the cold-start experiment is a leave-last-out split: no --cut")
    if is_dataset_file(dataset):
        spec, catalogue, ratings, profiles = interactions.load(Path(dataset))
        name = spec.name
        genres: dict[str, tuple[str, ...]] = {
            u.item_id: (u.category,) if u.category else () for u in catalogue}
    else:
        from app.demo import item_record, profile_of

        movies = movielens.movies(dataset)
        ratings = movielens.ratings(dataset)
        catalogue = [_upsert(item_record(m, 0)[1]) for m in movies]
        profiles = [profile_of(person, 0) for person in movielens.users(dataset)]
        name, genres = dataset, {m.item_id: m.genres for m in movies}
    hidden: frozenset[str] = frozenset()
    if cold_items > 0:
        ratings, hidden = hide_items(ratings, cold_items)
    ids = [u.item_id for u in catalogue]
    split = time_split(ratings, ids, cut) if cut is not None else leave_last_out(ratings, ids)
    split.dataset = name
    split.genres = genres
    split.hidden = hidden
    split.catalogue = catalogue
    split.profiles = profiles
    return split


def catalogue_records(split: Split, ts_ms: int) -> list[tuple[bytes, bytes, str]]:
    """(key, value, item id) of an upsert of every catalogue item, dated ``ts_ms``."""
    return _dated([(u.item_id, u) for u in split.catalogue], "item", ts_ms)


def profile_records(split: Split, ts_ms: int) -> list[tuple[bytes, bytes, str]]:
    """(key, value, user id) of every known user's profile, dated ``ts_ms``."""
    return _dated([(p.user_id, p) for p in split.profiles], "profile", ts_ms)


def _dated(records: list[tuple[str, ItemUpsert | UserProfile]], kind: str, ts_ms: int
           ) -> list[tuple[bytes, bytes, str]]:
    """Each (id, record) as (key, JSON value, id), its time ``ts_ms`` and its event id
    ``<kind>-<id>-<ts_ms>`` (one per publication)."""
    return [(key.encode(), msgspec.json.encode(msgspec.structs.replace(
        record, ts=ts_ms, event_id=f"{kind}-{key}-{ts_ms}")), key) for key, record in records]


_upsert = msgspec.json.Decoder(ItemUpsert).decode
