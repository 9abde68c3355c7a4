"""Operator tools that work on any broker, the embedded one included (kcat cannot talk to
Tansu): produce `key|value` lines, and print a topic with its headers."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.broker.reading import read_to_end
from app.broker.security import client_security
from app.contract.deadletter import read_headers
from app.core.artefacts import (
    HEAD_KEY,
    ArtefactStore,
    BehaviourHead,
    deletions,
    encode_head,
    publication,
    publish_verdict,
    to_delete,
)
from app.core.versions import HEAD, ModelVersion, Registry, Traffic, compare, encode_version
from app.errors import SettingError, WorkerUnreachableError
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


async def send_models(settings: Settings,
                      records: Iterable[tuple[bytes, bytes | None]]) -> None:
    """Publish records on the models topic, in order (a projection, or a behaviour model's
    chunks, before the head that names it; None: a tombstone)."""
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


async def read_behaviour(settings: Settings, within: float = 60.0) -> ArtefactStore:
    """The behaviour models on the models topic, read to its end."""
    store = ArtefactStore()
    await read_to_end(settings, settings.topic_models, store.apply, within)
    return store


def model_files(folder: Path) -> tuple[str, dict[str, bytes]]:
    """The version and files of a behaviour model exported by `streamrec train`."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise SettingError(f"{folder}: not an exported behaviour model ({exc})") from exc
    if manifest.get("kind") != "behaviour-model":
        raise SettingError(f"{folder}: its manifest.json is not a behaviour model's")
    names = ["manifest.json", *manifest["files"]]
    return str(manifest["version"]), {name: (folder / name).read_bytes() for name in names}


async def publish_behaviour(settings: Settings, folder: Path, note: str = "",
                            origin: str = "publish", store: ArtefactStore | None = None
                            ) -> tuple[BehaviourHead, int]:
    """Publish an exported behaviour model on the models topic and make it the head: every
    worker serves it without a restart. Versions beyond the newest ``KEEP`` are deleted.
    ``store``: the topic as already read (read here when None). Returns the head and the
    bytes sent."""
    version, files = model_files(folder)
    store = store if store is not None else await read_behaviour(settings)
    now = int(time.time() * 1000)
    artefact, records = publication(version, files, now, note)
    head = BehaviourHead(version=version, previous=store.served(), published_at=now,
                         origin=origin, note=note)
    kept = {**store.artefacts, version: artefact}
    stale = to_delete(kept, {version, head.previous})
    await send_models(settings, [*records, (HEAD_KEY, encode_head(head)),
                                 *(record for old in stale for record in deletions(old))])
    return head, artefact.size


def served_result(store: ArtefactStore) -> dict[str, Any] | None:
    """The measured result in the served behaviour model's manifest (None: none served)."""
    version = store.served()
    if not version:
        return None
    manifest = json.loads(store.files(version)["manifest.json"])
    result: dict[str, Any] = manifest.get("result", {})
    return result


async def publish_if_better(settings: Settings, folder: Path, note: str, force: bool
                            ) -> tuple[BehaviourHead | None, str]:
    """Publish a newly trained behaviour model only when it beats the served one on
    validation (``publish_verdict``), or when ``force``d; the head (None: not published)
    and why."""
    store = await read_behaviour(settings)
    new = json.loads((folder / "manifest.json").read_text()).get("result", {})
    better, why = publish_verdict(new, served_result(store))
    if not (better or force):
        return None, why
    head, _ = await publish_behaviour(settings, folder, note, origin="trainer", store=store)
    return head, why if better else f"forced: {why}"


async def roll_back_behaviour(settings: Settings, to: str | None) -> BehaviourHead:
    """Serve a kept behaviour model again (``to``; default: the one the head replaced;
    "none": no model)."""
    store = await read_behaviour(settings)
    target = store.rollback_target(to)
    head = BehaviourHead(version=target, previous=store.served(),
                         published_at=int(time.time() * 1000), origin="rollback",
                         note=f"rolled back by command from {store.served() or 'none'}")
    await send_models(settings, [(HEAD_KEY, encode_head(head))])
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
