"""Which partition a keyed record belongs on: Kafka's default partitioner (murmur2 of the
key, as the Java client and aiokafka compute it). Every StreamRec topic keyed by user (or
item) relies on it: a user's records and state must meet on one partition."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner sends ``key`` to, of ``partitions``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
