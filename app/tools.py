"""Operator tools that work on any broker, the embedded one included (kcat cannot talk to
Tansu): produce `key|value` lines, and print a topic with its headers."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.broker.security import client_security
from app.contract.deadletter import read_headers
from app.settings import Settings

LOGICAL = ("events", "items", "feedback", "users", "recommendations", "deadletter")


def topic_name(settings: Settings, name: str) -> str:
    """A logical topic name (events, items, ...) as configured, or a literal topic name."""
    if name in LOGICAL:
        return str(getattr(settings, f"topic_{name}"))
    return name


def split_line(line: str, separator: str) -> tuple[bytes | None, bytes]:
    key, found, value = line.rstrip("\n").partition(separator)
    if not found:
        return None, key.encode()
    return key.encode(), value.encode()


async def produce_lines(settings: Settings, topic: str, lines: Iterable[str],
                        separator: str) -> int:
    """Send one record per non-empty line; the default (murmur2) partitioner keeps user-keyed
    topics co-partitioned. Returns the number of records sent."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(), **client_security(settings)
    )
    await producer.start()
    sent = 0
    try:
        for line in lines:
            if not line.strip():
                continue
            key, value = split_line(line, separator)
            await producer.send_and_wait(topic, value, key=key)
            sent += 1
    finally:
        await producer.stop()
    return sent


def format_record(key: bytes | None, value: bytes | None,
                  headers: Iterable[tuple[str, bytes | None]]) -> str:
    dead = read_headers(headers)
    text = f"{(key or b'').decode('utf-8', 'replace')} {(value or b'').decode('utf-8', 'replace')}"
    if dead:
        where = f"{dead.get('topic')}[{dead.get('partition')}]@{dead.get('offset')}"
        return f"{dead.get('reason')} from {where}: {dead.get('detail')}\n  {text}"
    return text


async def tail(settings: Settings, topic: str, from_beginning: bool, count: int | None,
               idle_exit: float | None) -> int:
    """Print records of ``topic`` until ``count`` were printed or nothing arrived for
    ``idle_exit`` seconds (None: forever). Returns how many were printed."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers(),
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **client_security(settings),
    )
    await consumer.start()
    printed = 0
    last = time.monotonic()
    try:
        while count is None or printed < count:
            batches = await consumer.getmany(timeout_ms=250)
            for messages in batches.values():
                for message in messages:
                    print(format_record(message.key, message.value, message.headers))
                    printed += 1
                    last = time.monotonic()
            sys.stdout.flush()
            if idle_exit is not None and time.monotonic() - last > idle_exit:
                break
    finally:
        await consumer.stop()
    return printed
