"""Plain Kafka clients for tests: produce exact bytes, read a whole topic."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord


async def produce(bootstrap: str, topic: str,
                  records: list[tuple[bytes | None, bytes | None]],
                  batched: bool = False) -> list[tuple[int, int]]:
    """Send records in order; return (partition, offset) of each. One at a time, or with
    ``batched`` all at once, so that many records share a producer batch (and the worker
    takes them in large batches)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024,
                                linger_ms=50 if batched else 0)
    await producer.start()
    try:
        if batched:
            futures = [await producer.send(topic, value, key=key) for key, value in records]
            metas = await asyncio.gather(*futures)
        else:
            metas = [await producer.send_and_wait(topic, value, key=key)
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
