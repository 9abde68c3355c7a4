"""Bounded exploration: an epsilon slot (pure functions).

A learner sees feedback only on what it shows. With probability ``epsilon`` a list gives one
slot (``slot``, counted from 0) to an item the ranker placed just outside the list
(``pool`` ranks below the last shown one); everything else keeps its place. Bounded: at most
one item per list, never the first positions, and off (epsilon 0) by default so replays
compare rankers, not luck. The draw is seeded by the recommendation id, so a list can be
reproduced and an explored item recognised in its feedback.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from app.core.recommender import Ranking


@dataclass(frozen=True)
class Exploration:
    epsilon: float = 0.0      # share of lists that explore
    slot: int = 9             # the position an explored item takes (0 = first)
    pool: int = 40            # how far below the list it may come from

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError("epsilon must be within [0, 1]")
        if self.slot < 1 or self.pool < 1:
            raise ValueError("the explored slot must not be the first, the pool not empty")


def _rng(rec_id: str) -> random.Random:
    seed = int.from_bytes(hashlib.blake2b(rec_id.encode(), digest_size=8).digest(), "big")
    return random.Random(seed)   # noqa: S311 - exploration, not security


def explore(ranked: Sequence[str], k: int, policy: Exploration, rec_id: str
            ) -> tuple[list[str], str | None]:
    """The k items to show from ``ranked`` (best first, longer than k when a pool exists),
    and the explored item (None when this list does not explore)."""
    shown = list(ranked[:k])
    pool = list(ranked[k:k + policy.pool])
    rng = _rng(rec_id)
    if policy.epsilon <= 0 or not pool or rng.random() >= policy.epsilon:
        return shown, None
    chosen = rng.choice(pool)
    slot = min(policy.slot, len(shown) - 1) if shown else 0
    if slot < 1:
        return shown, None
    shown[slot] = chosen
    return shown, chosen


def explored(ranking: Ranking, k: int, policy: Exploration, rec_id: str) -> Ranking:
    """The list to show from a ranking ``policy.pool`` longer than ``k``: its first k items,
    one slot given to an item from below them when this list explores (ranks renumbered,
    each item keeps its own explanation and features)."""
    position = {item.item_id: n for n, item in enumerate(ranking.items)}
    shown, _ = explore(list(position), k, policy, rec_id)
    rows = [position[item] for item in shown]
    items = [msgspec.structs.replace(ranking.items[row], rank=rank)
             for rank, row in enumerate(rows, start=1)]
    return Ranking(items, ranking.counts, [ranking.features[row] for row in rows],
                   ranking.alternatives)
