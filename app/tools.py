"""Operator tools that work on any broker, the embedded one included (kcat cannot talk to
Tansu): produce `key|value` lines, and print a topic with its headers."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.broker.reading import read_to_end
from app.broker.security import client_security
from app.contract.deadletter import read_headers
from app.core.versions import HEAD, ModelVersion, Registry, Traffic, compare, encode_version
from app.errors import WorkerUnreachableError
from app.metrics import scrape, total
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


async def send_records(settings: Settings, topic: str,
                       records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    """Send (key, value) records one by one, each acknowledged; the default (murmur2)
    partitioner keeps user-keyed topics co-partitioned. Returns how many were sent."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(), **client_security(settings)
    )
    await producer.start()
    sent = 0
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
            sent += 1
    finally:
        await producer.stop()
    return sent


async def produce_lines(settings: Settings, topic: str, lines: Iterable[str],
                        separator: str) -> int:
    """Send one record per non-empty line (``key<separator>value``). Returns the number of
    records sent."""
    return await send_records(settings, topic, (split_line(line, separator)
                                                for line in lines if line.strip()))


async def forget_users(settings: Settings, user_ids: Iterable[str]) -> int:
    """Ask the workers to forget users: a tombstone keyed by each id on the users topic
    (docs/contract.md, "Forgetting a user"). Returns how many were sent."""
    return await send_records(settings, settings.topic_users,
                              ((user_id.encode(), None) for user_id in user_ids))


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


async def read_models(settings: Settings, within: float = 30.0) -> Registry:
    """The models topic read to its end: the learning variant's head and checkpoints."""
    registry = Registry()
    await read_to_end(settings, settings.topic_models, registry.apply, within)
    return registry


async def send_models(settings: Settings, records: Iterable[tuple[bytes, bytes]]) -> None:
    """Publish records on the models topic, in order (a projection before the head that
    names it)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(),
                                max_request_size=4 * 1024 * 1024, **client_security(settings))
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(settings.topic_models, value, key=key)
    finally:
        await producer.stop()


async def roll_back(settings: Settings, to: str | None) -> ModelVersion:
    """Publish a checkpoint as the learning variant's head (the trainer trains on from it).
    ``to`` names a kept checkpoint; None: the newest one older than the head."""
    registry = await read_models(settings)
    target = registry.rollback_target(to)
    if target is None:
        kept = ", ".join(v.version for v in registry.checkpoints.values()) or "none"
        raise LookupError(f"no checkpoint to roll back to (asked: {to or 'previous'}; "
                          f"kept: {kept})")
    head = msgspec.structs.replace(
        target, origin="command", published_at=int(time.time() * 1000), reward_at=0,
        note=f"rolled back by command from {registry.head.version if registry.head else '-'}")
    await send_models(settings, [(HEAD, encode_version(head))])
    return head


def experiment_summary(urls: Iterable[str], variants: Iterable[str]) -> dict[str, Any]:
    """Per variant, summed over the workers' /metrics: items shown, clicks, click-through,
    conversions; and each variant's z against the first (the control)."""
    samples = []
    for url in urls:
        try:
            samples.append(scrape(url))
        except OSError as exc:   # refused, unresolvable, timed out: no worker there
            reason = getattr(exc, "reason", exc)
            raise WorkerUnreachableError(
                f"no worker answers at {url.removesuffix('/metrics')} ({reason}); start one "
                "(`streamrec worker`) or name a running one with --worker URL") from exc

    def summed(name: str, **labels: str) -> int:
        return int(sum(total(s, name, **labels) for s in samples))

    rows: dict[str, dict[str, Any]] = {}
    for variant in variants:
        traffic = Traffic(summed("streamrec_shown_items_total", variant=variant),
                          summed("streamrec_feedback_total", variant=variant, type="click"))
        rows[variant] = {"shown": traffic.impressions, "clicks": traffic.clicks,
                         "ctr": round(traffic.ctr, 5),
                         "conversions": summed("streamrec_conversions_total", variant=variant)}
    control = next(iter(rows), None)
    for variant, row in rows.items():
        if control is not None and variant != control:
            verdict = compare(Traffic(row["shown"], row["clicks"]),
                              Traffic(rows[control]["shown"], rows[control]["clicks"]),
                              min_impressions=1)
            row[f"z_vs_{control}"] = round(verdict.z, 2)
    return {"variants": rows, "workers": len(samples),
            "rollbacks": summed("streamrec_model_rollbacks_total"),
            "unattributed": summed("streamrec_unattributed_feedback_total")}
