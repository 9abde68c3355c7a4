"""What the behaviour model reads: each user's item events as token arrays (pure numpy).

A user's history becomes three aligned integer arrays, oldest first, left-padded with 0 to
a fixed length: the item (its index in the model's vocabulary, 1-based; 0 is padding), the
event's kind (view, add to cart, purchase; 0 is padding) and how long before it the
previous event happened, as a log-scale bucket (``gap_bucket``). Training and serving build
them with the same functions, so the model sees at serving time exactly what it learnt on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

KINDS: dict[str, int] = {"view": 1, "add_to_cart": 2, "purchase": 3}
"""Event kinds as model tokens (0 is padding)."""

GAP_BUCKETS = 24
"""Time-gap buckets: 1 for the first event (no previous one), 2 for under a minute, then
one bucket per doubling of minutes up to the last (over ~2 years)."""


def gap_bucket(gap_ms: int | None) -> int:
    """The bucket of the time since the previous event (None: there was none)."""
    if gap_ms is None:
        return 1
    minutes = max(gap_ms, 0) / 60_000
    if minutes < 1:
        return 2
    return min(GAP_BUCKETS - 1, 3 + int(math.log2(minutes)))


@dataclass(frozen=True, slots=True)
class Tokens:
    """A batch of histories as model input: each array is (users, length)."""

    items: IntArray
    kinds: IntArray
    gaps: IntArray


def tokens(histories: Sequence[Sequence[tuple[int, int, int]]], length: int) -> Tokens:
    """Histories of (item index, kind token, event time ms), oldest first, as a batch:
    the last ``length`` events of each, left-padded."""
    items = np.zeros((len(histories), length), dtype=np.int64)
    kinds = np.zeros_like(items)
    gaps = np.zeros_like(items)
    for row, history in enumerate(histories):
        tail = history[-length:]
        start = length - len(tail)
        before = len(history) - len(tail)
        previous = history[before - 1][2] if before > 0 else None
        for column, (item, kind, ts) in enumerate(tail, start):
            items[row, column] = item
            kinds[row, column] = kind
            gaps[row, column] = gap_bucket(None if previous is None else ts - previous)
            previous = ts
    return Tokens(items, kinds, gaps)


class Vocabulary:
    """Item ids to model indices (1-based, 0 is padding), in a fixed order."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.ids: list[str] = list(item_ids)
        self.index: dict[str, int] = {item: n + 1 for n, item in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def of(self, item_id: str) -> int:
        """The item's index, 0 when the vocabulary does not know it."""
        return self.index.get(item_id, 0)
