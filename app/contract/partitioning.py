"""Which partition a keyed record belongs on: Kafka's default partitioner (murmur2 of the
key, as the Java client and aiokafka compute it). Every StreamRec topic keyed by user (or
item) relies on it: a user's records and state must meet on one partition."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner sends ``key`` to, of ``partitions``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=1 << 20)
def item_partition(key: bytes, partitions: int) -> int:
    """:func:`partition_of`, remembered for the last million keys: item ids recur in every
    batch's evidence, and murmur2 is pure Python here (~1.7% of a global-statistics
    worker's samples)."""
    return partition_of(key, partitions)
