"""`streamrec replay`: a dataset streamed through the real pipeline.

A real broker, a real worker process (the same `streamrec worker` users run) and the real
encoder. The catalogue is published first and the run waits until the worker has embedded
and indexed it; then the split's stream (every rating a `view`, ratings >= 4 also a
`purchase`; targets withheld, see :mod:`app.evaluation.split`) is produced in order, either
paced at ``rate`` events/s or as fast as the worker accepts: the producer keeps at most
``window`` events ahead of what the worker has processed (read from its /metrics), so the
latencies measured are the pipeline's, not those of a backlog the producer built up.

Every recommendation published is read back; the last one each user received is what
`streamrec eval` scores. Nothing is scored here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer

from app.broker.admin import ensure_topics, wait_until_ready
from app.contract.records import Recommendation
from app.data import movielens
from app.demo import item_record, rating_records
from app.evaluation.split import Split
from app.harness import WorkerRun, produce_records
from app.metrics import scrape, total

VARIANTS = {
    # name: candidate sources (StreamRec settings), for the ablations
    "streamrec": "encoder,covisit,popular",
    "no-encoder": "covisit,popular",
    "no-covisit": "encoder,popular",
}


@dataclass
class ReplayRun:
    dataset: str
    variant: str
    sources: str
    k: int
    events: int
    seconds: float
    events_per_second: float
    recommendations: int
    lists: dict[str, list[str]] = field(default_factory=dict)   # last list per user
    explanation_kinds: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.variant}.json"
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, path: Path) -> ReplayRun:
        return cls(**json.loads(path.read_text()))


def stream_records(split: Split) -> list[tuple[bytes, bytes, str]]:
    """(key, value, event id) of the split's stream, in order."""
    out: list[tuple[bytes, bytes, str]] = []
    for rating in split.stream:
        records = rating_records(split.dataset, rating)
        ids = [f"{split.dataset}-{rating.row}-view", f"{split.dataset}-{rating.row}-purchase"]
        pairs = zip(records, ids, strict=False)  # a view, and a purchase for rating >= 4
        out.extend((key, value, event_id) for (key, value), event_id in pairs)
    return out


def _processed(url: str) -> float:
    return total(scrape(url), "streamrec_input_records_total", topic="events")


class _Collector:
    """Reads the recommendations topic from the start; keeps each user's last list."""

    def __init__(self, bootstrap: str, topic: str, sent: dict[str, float]) -> None:
        self._bootstrap, self._topic, self._sent = bootstrap, topic, sent
        self.lists: dict[str, list[str]] = {}
        self.kinds: dict[str, int] = {}
        self.latency_ms: list[float] = []
        self.count = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(self._topic, bootstrap_servers=self._bootstrap,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=8 * 1024 * 1024)
        decode = msgspec.json.Decoder(Recommendation).decode
        await consumer.start()
        try:
            while not self.stop.is_set():
                for messages in (await consumer.getmany(timeout_ms=200,
                                                        max_records=2000)).values():
                    for message in messages:
                        if message.value:
                            self._take(decode(message.value))
        finally:
            await consumer.stop()

    def _take(self, rec: Recommendation) -> None:
        self.count += 1
        self.lists[rec.user_id] = [item.item_id for item in rec.items]
        for item in rec.items[:10]:
            kind = item.explanation.kind
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        sent = self._sent.get(rec.source_event_id)
        if sent is not None:
            self.latency_ms.append((rec.produced_at / 1000 - sent) * 1000)


async def replay(split: Split, broker: str, workdir: Path, variant: str, k: int = 50,
                 rate: float | None = None, window: int = 5_000, partitions: int = 4,
                 say: Callable[[str], None] = print,
                 progress: Callable[[int, int, float], None] | None = None) -> ReplayRun:
    """Stream ``split`` through a fresh worker (its own topics and group) and collect what it
    published."""
    run = WorkerRun(broker, workdir / variant, partitions, name="replay",
                    recommendation_size=str(k), candidate_sources=VARIANTS[variant])
    settings = run.settings
    await wait_until_ready(settings)
    await ensure_topics(settings)
    run.start_worker()
    sent: dict[str, float] = {}
    collector = _Collector(broker, settings.topic_recommendations, sent)
    collecting = asyncio.create_task(collector.run())
    try:
        await run.wait_metric("streamrec_catalogue_items", 0)
        movies = movielens.movies(split.dataset)
        first_ts = split.stream[0].ts_ms if split.stream else 0
        items = [(*item_record(m, first_ts), m.item_id) for m in movies]
        await produce_records(broker, settings.topic_items, items, None, {}, {})
        began = time.monotonic()
        await run.wait_metric("streamrec_catalogue_items", len(movies))
        say(f"{variant}: catalogue of {len(movies):,} items embedded and indexed in "
            f"{time.monotonic() - began:.1f}s")
        records = stream_records(split)
        began = time.monotonic()
        await produce_records(broker, settings.topic_events, records, rate, sent, {},
                              gate=_flow_control(run, window), progress=progress, linger_ms=2)
        while (done := await asyncio.to_thread(_processed, run.metrics_url)) < len(records):
            if not run.alive():
                raise RuntimeError(f"the worker exited; see {run.log}")
            if progress:
                progress(int(done), len(records), time.monotonic() - began)
            await asyncio.sleep(0.2)
        seconds = time.monotonic() - began
        published = total(await asyncio.to_thread(scrape, run.metrics_url),
                          "streamrec_recommendations_total")
        deadline = time.monotonic() + 120
        while collector.count < published and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    finally:
        collector.stop.set()
        await collecting
        run.stop_worker()
    return ReplayRun(
        dataset=split.dataset, variant=variant, sources=VARIANTS[variant], k=k,
        events=len(records), seconds=seconds, events_per_second=len(records) / seconds,
        recommendations=collector.count, lists=collector.lists,
        explanation_kinds=collector.kinds,
        latency_ms=np.round(np.array(collector.latency_ms), 2).tolist(),
    )


def _flow_control(run: WorkerRun, window: int) -> Callable[[int], Awaitable[None]]:
    """A gate for the producer: once ``window`` records run ahead of what the worker has
    processed (its /metrics), wait until no more than half of that does."""
    processed = 0.0

    async def gate(n: int) -> None:
        nonlocal processed
        if n - processed < window:
            return
        while n - processed >= window // 2:
            if not run.alive():
                raise RuntimeError(f"the worker exited; see {run.log}")
            processed = await asyncio.to_thread(_processed, run.metrics_url)
            if n - processed >= window // 2:
                await asyncio.sleep(0.02)

    return gate


def summary(run: ReplayRun) -> dict[str, Any]:
    latency = np.array(run.latency_ms) if run.latency_ms else np.zeros(1)
    return {
        "variant": run.variant, "events": run.events, "seconds": round(run.seconds, 1),
        "events_per_second": round(run.events_per_second),
        "recommendations": run.recommendations,
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p99_ms": float(np.percentile(latency, 99)),
    }
