"""Reading a whole topic outside any consumer group: the catalogue, the models topic and
the global item statistics, which every worker (and an operator's command) reads from the
beginning (or, for the item evidence, from the snapshot's offsets on)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from app.broker.admin import wait_until_ready
from app.broker.security import client_security
from app.errors import TopicNotReadError
from app.settings import Settings

log = logging.getLogger(__name__)

Apply = Callable[[bytes | None, bytes | None], object]   # a return value is ignored
ApplyRecord = Callable[[ConsumerRecord[bytes, bytes]], object]
Failed = Callable[[str, BaseException], None]


def log_failure(topic: str, exc: BaseException) -> None:
    """The default for a record that could not be applied: its exception's type, logged
    (never the record: it may carry ids)."""
    log.error("a record of %s could not be applied (%s): skipped", topic, type(exc).__name__)


async def follow(settings: Settings, topic: str, apply: Apply, synced: asyncio.Event,
                 on_synced: Callable[[], None] = lambda: None,
                 keep_following: bool = True, failed: Failed = log_failure) -> None:
    """Apply every record of ``topic`` from its beginning, outside any consumer group;
    ``synced`` is set (and ``on_synced`` called) once what the topic held at the start is
    read. Then go on following it, or return when not ``keep_following``. A record that
    ``apply`` raises on is handed to ``failed`` and skipped: whatever a compacted topic
    holds, its followers go on (one bad record there used to stop every worker, at every
    start, until compaction removed it). Under exactly-once only committed records are
    read: a killed worker's aborted table writes are never followed."""
    await follow_records(settings, topic, lambda message: apply(message.key, message.value),
                         synced, on_synced, keep_following, failed)


async def follow_records(settings: Settings, topic: str, apply: ApplyRecord,
                         synced: asyncio.Event, on_synced: Callable[[], None] = lambda: None,
                         keep_following: bool = True, failed: Failed = log_failure,
                         start: Callable[[int], int] | None = None) -> None:
    """:func:`follow`, with each whole record (its partition and offset too) handed to
    ``apply``, and each partition read from ``start(partition)`` (default: its
    beginning; an offset the topic no longer holds: its oldest record)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if settings.exactly_once else "read_uncommitted",
        **client_security(settings),
    )
    await consumer.start()
    try:
        ends: dict[Any, int] = {}
        while not ends:
            assigned = consumer.assignment()
            if assigned:
                ends = await consumer.end_offsets(list(assigned))
            else:
                await asyncio.sleep(0.1)
        if start is not None:
            for tp in ends:
                consumer.seek(tp, start(tp.partition))
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for messages in batches.values():
                for message in messages:
                    try:
                        apply(message)
                    except Exception as exc:  # noqa: BLE001 - one record must not stop it
                        failed(topic, exc)
            if not synced.is_set() and await _caught_up(consumer, ends):
                synced.set()
                on_synced()
                if not keep_following:
                    return
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


async def read_to_end(settings: Settings, topic: str, apply: Apply, within: float) -> None:
    """Apply what ``topic`` holds now, from its beginning; TimeoutError after ``within`` s
    (BrokerUnreachableError first, when the cluster does not answer at all)."""
    await wait_until_ready(settings)
    try:
        await asyncio.wait_for(follow(settings, topic, apply, asyncio.Event(),
                                      keep_following=False), within)
    except TimeoutError as exc:
        raise TopicNotReadError(
            f"{topic} not read to its end in {within:.0f} s: does it exist (`streamrec "
            f"topics` creates it) and does the broker at {settings.bootstrap_servers()} "
            "answer?") from exc


async def _caught_up(consumer: AIOKafkaConsumer, ends: dict[Any, int]) -> bool:
    for tp, end in ends.items():
        if int(await consumer.position(tp)) < end:
            return False
    return True
