"""The owner's side of the global item statistics (``item_stats=global``): the glue between
Faust's batches of the evidence topic and app.core.itemstats.

Each worker owns the evidence partitions the consumer group gives it. Per partition it
keeps the merged statistics of that partition's items in memory (an :class:`ItemStats`,
put back from the ``item-stats`` table when the partition is first read after a start or
a rebalance), merges every record of a batch, then writes each changed item's entry to the
table once per batch, and the partition's snapshot marker after them: the table's
compacted changelog is the snapshot a starting worker loads before it follows the
evidence itself (app.core.itemstats.Follower).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from app.contract.partitioning import partition_of
from app.contract.validate import Reason, Rejection
from app.core.covisit import CoVisitation
from app.core.itemstats import (
    ItemStats,
    SnapshotMark,
    decode_evidence,
    decode_summary,
    encode,
    is_mark,
    snapshot_key,
)
from app.metrics import Metrics
from app.worker.faust_compat import acting_as
from app.worker.results import count_failure

log = logging.getLogger(__name__)

_WRITES_PER_SLICE = 200   # entries written between two turns of the event loop

DeadLetter = Callable[[Any, Rejection], Any]   # (Faust event, why) -> awaitable


class ItemOwners:
    """The statistics of the evidence partitions this worker owns."""

    def __init__(self, table: Any, rules: CoVisitation, half_life_ms: int, partitions: int,
                 metrics: Metrics, assignment: Callable[[], frozenset[int]]) -> None:
        """``assignment``: the evidence partitions this worker is given now."""
        self._table = table
        self._rules = rules
        self._half_life_ms = half_life_ms
        self._partitions = partitions
        self._metrics = metrics
        self._assignment = assignment
        self._owned: dict[int, ItemStats] = {}
        self._built_for: frozenset[int] | None = None

    def _stats(self, partition: int) -> ItemStats:
        """The partition's statistics, put back from the table when first asked for since
        they were last dropped."""
        stats = self._owned.get(partition)
        if stats is None:
            stats = self._owned[partition] = ItemStats.like(self._rules, self._half_life_ms)
            restored = 0
            for key, value in self._table.items():
                if not is_mark(key) and partition_of(key, self._partitions) == partition:
                    stats.restore(key.decode(), decode_summary(value))
                    restored += 1
            stats.summaries()   # put back, not changed
            log.info("item statistics of evidence partition %d put back: %d items",
                     partition, restored)
        return stats

    async def process(self, batch: Sequence[Any], dead_letter: DeadLetter) -> None:
        """Merge a batch of evidence records, then write each changed item's entry, in
        the partition of the record it came from (the table is co-partitioned with the
        evidence topic, as the items are). After a new assignment every partition is put
        back from the table (another worker may have merged into it meanwhile); after a
        failure too, so that the batch run again merges exactly what the table lacks."""
        assigned = self._assignment()
        if assigned != self._built_for:
            self._owned, self._built_for = {}, assigned
        try:
            await self._merge_and_write(batch, dead_letter)
        except BaseException:
            self._owned, self._built_for = {}, None
            raise

    async def _merge_and_write(self, batch: Sequence[Any], dead_letter: DeadLetter) -> None:
        last: dict[int, Any] = {}
        for event in batch:
            message = event.message
            try:
                record = decode_evidence(message.value)
            except Exception as exc:  # noqa: BLE001 - one bad record costs only itself
                count_failure(self._metrics, "evidence", exc)
                await dead_letter(event, Rejection(Reason.PROCESSING_ERROR, "not an "
                                                   "evidence record", type(exc).__name__))
                continue
            self._stats(message.partition).merge(record, message.offset)
            last[message.partition] = event
        for partition, event in last.items():
            for n, (item, summary) in enumerate(self._owned[partition].summaries(), 1):
                with acting_as(event):
                    self._table[item.encode()] = encode(summary)
                if n % _WRITES_PER_SLICE == 0:   # thousands after a long flush: let pulls
                    await asyncio.sleep(0)       # and the other agents in between
            with acting_as(event):   # after its entries: they hold the batch's records
                self._table[snapshot_key(partition)] = encode(SnapshotMark(
                    1, event.message.offset))
