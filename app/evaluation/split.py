"""The leave-last-out split of a MovieLens stream, as the replay and the evaluation see it.

Ratings are in timestamp order, ties broken by the original row order (a stable sort). Each
user's last rating is their *target*: the replay withholds it, so the recommendation a user
last received before it was computed without it (in a stream that delivered it, a burst of
ratings in one batch could let the recommendation see its own target). Everything else is
the *stream*; the offline baselines train on exactly that.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from app.data import movielens


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


def load(dataset: str) -> Split:
    movies = movielens.movies(dataset)
    split = leave_last_out(movielens.ratings(dataset), [m.item_id for m in movies])
    split.dataset = dataset
    split.genres = {m.item_id: m.genres for m in movies}
    return split
