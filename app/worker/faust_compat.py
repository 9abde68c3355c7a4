"""The one place StreamRec touches private Faust APIs.

Faust tables find the partition of a changelog write through the "current event" context
variable, which Faust sets only on its per-event path. Inside ``stream.take_events()`` the
agent handles a whole batch, so before it writes a key's state it sets the current event to
that key's last event itself (faust-streaming issue #497). A test covers this.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event


@contextmanager
def acting_as(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event for table writes inside the block."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def consumer_lag(app: Any, topics: set[str]) -> dict[tuple[str, int], int]:
    """Records not yet read, per assigned partition of ``topics``: the high-water mark from
    the last fetch minus the next offset to read (Faust keeps the last read offset in a
    private map). Partitions not fetched yet are left out."""
    consumer = app.consumer
    read_offsets = getattr(consumer, "_read_offset", {})
    lags: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        if tp.topic not in topics:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001, S112 - not fetched yet, or no longer assigned
            continue
        if highwater is None:
            continue
        last_read = read_offsets.get(tp)
        next_read = 0 if last_read is None else last_read + 1
        lags[(tp.topic, tp.partition)] = max(0, highwater - next_read)
    return lags


def table_keys(table: Any) -> int:
    """Keys a table holds for this worker's active partitions: RocksDB's own estimate per
    partition database (no scan, so cheap with millions of users); a store without one
    (the in-memory store of tests) is counted."""
    store = table.data
    active = getattr(store, "_dbs_for_actives", None)
    if active is None:
        return len(store)
    total = 0
    for db in active():
        estimate = db.property_int_value("rocksdb.estimate-num-keys")
        total += int(estimate or 0)
    return total
