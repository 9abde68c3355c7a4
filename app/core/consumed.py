"""Every item a user has consumed, compactly: the seen-set that keeps lists free of them.

A user's consumed items are kept as 32-bit hashes (CRC-32 of the item id's UTF-8 bytes),
little-endian ``uint32`` in the order first consumed, at most ``limit`` of them (the oldest
are forgotten first): 4 bytes an item, 8 KiB at the default limit of 2,048. A list leaves
out every candidate whose hash is in the set.

False positives: an item that was never consumed is left out only when its hash equals one
of the user's ``n`` hashes. CRC-32 never maps two ids of the same length that differ in at
most 32 bits to the same value, and otherwise behaves as a uniform hash: the chance is at
most ``n / 2**32`` per candidate (4.8e-7 at n = 2,048; ~1.4e-4 that any of a 300-candidate
list's is wrongly left out). False negatives: only items forgotten beyond the limit.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

import numpy as np
import numpy.typing as npt

CONSUMED_LIMIT = 2048
_DTYPE = np.dtype("<u4")
_ONE = struct.Struct("<I")


# item id -> hash, for the ids lists are checked against (each list checks ~1,000 ids:
# hashing each afresh was a third of a recommendation's time); emptied when full
_KNOWN: dict[str, int] = {}
KNOWN_LIMIT = 1 << 20


def item_hash(item_id: str) -> int:
    return zlib.crc32(item_id.encode("utf-8", "surrogatepass"))


def known_hash(item_id: str) -> int:
    """``item_hash``, remembered."""
    found = _KNOWN.get(item_id)
    if found is None:
        if len(_KNOWN) >= KNOWN_LIMIT:
            _KNOWN.clear()
        found = _KNOWN[item_id] = item_hash(item_id)
    return found


def hashes(item_ids: Sequence[str]) -> npt.NDArray[np.uint32]:
    return np.fromiter((known_hash(i) for i in item_ids), dtype=_DTYPE, count=len(item_ids))


def held(consumed: bytes) -> frozenset[int]:
    """The set's hashes, for many membership checks in a row (``in_held``,
    ``sorted_hashes``)."""
    return frozenset(np.frombuffer(consumed, dtype=_DTYPE).tolist())


def in_held(hashed: AbstractSet[int], item_ids: Sequence[str]) -> npt.NDArray[np.bool_]:
    """For each of ``item_ids``, whether its hash is in ``hashed`` (``held``)."""
    return np.fromiter((known_hash(i) in hashed for i in item_ids), dtype=bool,
                       count=len(item_ids))


def sorted_hashes(hashed: AbstractSet[int]) -> npt.NDArray[np.uint32]:
    """``hashed`` (``held``) as a sorted array, for checking arrays of hashes against it at
    once (``in_sorted``)."""
    out: npt.NDArray[np.uint32] = np.sort(np.fromiter(hashed, dtype=_DTYPE,
                                                      count=len(hashed)))
    return out


def in_sorted(ordered: npt.NDArray[np.uint32], hashed: npt.NDArray[np.uint32]
              ) -> npt.NDArray[np.bool_]:
    """For each of ``hashed``, whether it is in ``ordered`` (``sorted_hashes``): one binary
    search per hash in numpy, not a set lookup per item id in Python."""
    if not len(ordered):
        return np.zeros(len(hashed), dtype=bool)
    at = np.minimum(ordered.searchsorted(hashed), len(ordered) - 1)
    found: npt.NDArray[np.bool_] = ordered[at] == hashed
    return found


def size(consumed: bytes) -> int:
    """How many items the set holds."""
    return len(consumed) // _DTYPE.itemsize


def add(consumed: bytes, item_ids: Sequence[str], limit: int = CONSUMED_LIMIT) -> bytes:
    """The set with ``item_ids`` added (those already in it keep their place); the oldest
    are dropped beyond ``limit``."""
    if not item_ids:
        return consumed
    if len(item_ids) == 1:   # the fold's case, once per event: no sorting, no numpy copy
        one = item_hash(item_ids[0])
        if consumed and bool((np.frombuffer(consumed, dtype=_DTYPE) == one).any()):
            return consumed
        return (consumed + _ONE.pack(one))[-limit * _ONE.size:] if limit > 0 else b""
    held = np.frombuffer(consumed, dtype=_DTYPE)
    new = hashes(item_ids)
    _, first = np.unique(new, return_index=True)
    new = new[np.sort(first)]                       # each new hash once, in order
    new = new[~np.isin(new, held)]
    if not len(new):
        return consumed
    merged = np.concatenate([held, new])[-limit:] if limit > 0 else new[:0]
    return merged.astype(_DTYPE).tobytes()


def add_each(consumed: bytes, item_ids: Sequence[str], limit: int = CONSUMED_LIMIT) -> bytes:
    """The set after adding each of ``item_ids`` in turn with ``add`` (one at a time: an
    item already held keeps its place, the oldest go beyond ``limit``, and one dropped
    earlier in the batch comes back at the end), unpacked and packed once."""
    if not item_ids:
        return consumed
    if limit <= 0:
        return b""
    order: list[int] = np.frombuffer(consumed, dtype=_DTYPE).tolist()
    held: dict[int, int] = {}   # hash -> copies among order[start:]
    for one in order:
        held[one] = held.get(one, 0) + 1
    start = 0
    changed = False
    for item in item_ids:
        one = known_hash(item)
        if held.get(one):
            continue
        order.append(one)
        held[one] = 1
        changed = True
        while len(order) - start > limit:
            held[order[start]] -= 1
            start += 1
    if not changed:
        return consumed
    return np.array(order[start:], dtype=_DTYPE).tobytes()


def contains(consumed: bytes, item_ids: Sequence[str]) -> npt.NDArray[np.bool_]:
    """For each of ``item_ids``, whether the set holds it."""
    return in_held(held(consumed), item_ids)
