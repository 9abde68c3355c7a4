"""What the behaviour model reads: each user's item events as token arrays (pure numpy).

A user's history becomes three aligned integer arrays, oldest first, left-padded with 0 to
a fixed length: the item (its index in the model's vocabulary, 1-based; 0 is padding), the
event's kind (view, add to cart, purchase; 0 is padding) and how long before it the
previous event happened, as a log-scale bucket (``gap_bucket``). Training and serving build
them with the same functions, so the model sees at serving time exactly what it learnt on.

A worker keeps each user's last events in their state in the same form, compactly
(``append``: 6 bytes an event, the item as the CRC-32 of its id, app.core.consumed), and
turns them into tokens for whichever model version it serves (``stored_tokens``): the
kind and the gap bucket are fixed when the event is folded, the item index is looked up
in the model's vocabulary at serving time.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.core.consumed import item_hash

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


SEQUENCE_LENGTH = 200
"""Events kept per user for the model (1.2 KB): the length the model reads by default."""
STORED = np.dtype([("item", "<u4"), ("kind", "u1"), ("gap", "u1")])
_EVENT = struct.Struct("<IBB")   # one STORED event, packed without numpy (per event: cheap)
assert _EVENT.size == STORED.itemsize


def append(stored: bytes, item_id: str, kind: str, gap_ms: int | None,
           limit: int = SEQUENCE_LENGTH) -> bytes:
    """A user's stored sequence with one item event added (``gap_ms``: the time since their
    previous item event, None for the first); the oldest beyond ``limit`` are dropped.

    An event on the item the sequence ends with (a view, then a cart, then a purchase of
    it) is one interaction: it raises the last event's kind to the stronger of the two and
    adds nothing, as training reads one event per rating."""
    if limit <= 0:
        return b""
    token = KINDS.get(kind, KINDS["view"])
    size = _EVENT.size
    item = item_hash(item_id)
    if len(stored) >= size:
        last_item, last_kind, last_gap = _EVENT.unpack_from(stored, len(stored) - size)
        if last_item == item:
            return (stored[-limit * size:-size]
                    + _EVENT.pack(item, max(last_kind, token), last_gap))
    kept = (limit - 1) * size
    return stored[max(len(stored) - kept, 0):] + _EVENT.pack(item, token, gap_bucket(gap_ms))


def stored_events(stored: bytes) -> npt.NDArray[np.void]:
    return np.frombuffer(stored, dtype=STORED)


class HashedVocabulary:
    """A model's vocabulary keyed by the items' stored hashes (sorted, for one vectorised
    lookup per batch); an item the model does not know is 0, like padding."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        hashes = np.fromiter((item_hash(i) for i in item_ids), dtype=np.uint32,
                             count=len(item_ids))
        self._order = np.argsort(hashes, kind="stable")
        self._sorted = hashes[self._order]

    def lookup(self, hashes: npt.NDArray[np.uint32]) -> IntArray:
        if not len(self._sorted):
            return np.zeros(len(hashes), dtype=np.int64)
        at = np.searchsorted(self._sorted, hashes).clip(0, len(self._sorted) - 1)
        found = self._sorted[at] == hashes
        return np.where(found, self._order[at] + 1, 0).astype(np.int64)


def stored_tokens(sequences: Sequence[bytes], vocabulary: HashedVocabulary, length: int
                  ) -> Tokens:
    """Stored sequences as a batch of model input: the last ``length`` events of each,
    left-padded (an event on an item the model does not know keeps its place as padding's
    index 0 with its kind and gap)."""
    items = np.zeros((len(sequences), length), dtype=np.int64)
    kinds = np.zeros_like(items)
    gaps = np.zeros_like(items)
    for row, stored in enumerate(sequences):
        events = stored_events(stored)[-length:]
        if not len(events):
            continue
        start = length - len(events)
        items[row, start:] = vocabulary.lookup(events["item"])
        kinds[row, start:] = events["kind"]
        gaps[row, start:] = events["gap"]
    return Tokens(items, kinds, gaps)
