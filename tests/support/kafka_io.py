"""Plain Kafka clients for tests: produce exact bytes, read a whole topic."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from app.soak.fuzz import read_all


async def produce(bootstrap: str, topic: str,
                  records: list[tuple[bytes | None, bytes | None]],
                  batched: bool = False, timestamp_ms: int | None = None
                  ) -> list[tuple[int, int]]:
    """Send records in order; return (partition, offset) of each. One at a time, or with
    ``batched`` all at once, so that many records share a producer batch (and the worker
    takes them in large batches); ``timestamp_ms``: each record's Kafka timestamp (default:
    the time of sending)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024,
                                linger_ms=50 if batched else 0)
    await producer.start()
    try:
        if batched:
            futures = [await producer.send(topic, value, key=key, timestamp_ms=timestamp_ms)
                       for key, value in records]
            metas = await asyncio.gather(*futures)
        else:
            metas = [await producer.send_and_wait(topic, value, key=key,
                                                  timestamp_ms=timestamp_ms)
                     for key, value in records]
        return [(meta.partition, meta.offset) for meta in metas]
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, expect: int, within: float = 60.0
                     ) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning until ``expect`` records arrived (or time out)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
        auto_offset_reset="earliest",  # no group: every partition, from the start
    )
    await consumer.start()
    try:
        found: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + within
        while len(found) < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for messages in batches.values():
                found.extend(messages)
        await asyncio.sleep(0.5)  # anything beyond `expect` shows up too
        for messages in (await consumer.getmany(timeout_ms=300)).values():
            found.extend(messages)
        return found
    finally:
        await consumer.stop()


async def latest_by_key(bootstrap: str, topic: str) -> dict[bytes | None, bytes | None]:
    """Every key's last committed value in ``topic`` as it stands now (read to its end
    offsets, read_committed): a changelog's view of the state it backs."""
    return {message.key: message.value for message in await read_all(bootstrap, topic)}


async def committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """The offsets ``group`` has committed, per (topic, partition): what a worker that
    replaces the group's members starts reading from."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
        return {(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}
    finally:
        await admin.close()


async def history_of(bootstrap: str, topic: str, keys: set[bytes]
                     ) -> dict[bytes, list[tuple[int, int, bytes | None]]]:
    """Every record of ``keys`` in ``topic`` as (partition, offset, value), in order: how a
    changelog's view of a key came about, for a failure message."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        while not consumer.assignment():  # noqa: ASYNC110 - aiokafka has no event for it
            await asyncio.sleep(0.1)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        found: dict[bytes, list[tuple[int, int, bytes | None]]] = {k: [] for k in keys}
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    if message.key in found:
                        found[message.key].append(
                            (message.partition, message.offset, message.value))
        return found
    finally:
        await consumer.stop()
