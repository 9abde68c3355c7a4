"""The main job as a newcomer sees it: a broker, a worker, a real catalogue and real events.

``streamrec demo`` starts the embedded broker (when no broker is configured), starts a worker
process, publishes the MovieLens catalogue and user profiles, streams the ratings as events
in time order, and shows what the worker does with them, live: accepted events by type,
duplicates, dead letters with their reasons, and recommendations as they are published.

A few malformed records (one per rejection reason, in turn) and redelivered duplicates are
injected on purpose so the dead-letter path can be seen working; they are labelled as such.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.broker.admin import GroupLag, end_tracker, ensure_topics, wait_until_ready
from app.broker.embedded import check_embedded, start_if_needed, stop_process
from app.broker.security import client_security
from app.contract.deadletter import read_headers
from app.contract.records import ItemUpsert, Purchase, Recommendation, UserProfile, View
from app.contract.samples import BadSample, bad_event_samples
from app.data import movielens
from app.harness import wait_worker_ready
from app.metrics import scrape, total
from app.settings import Settings

POSITIVE_RATING = 4.0

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class DemoOptions:
    dataset: str = "ml-100k"
    limit: int | None = None
    rate: float = 5000.0
    bad_every: int = 2000
    duplicate_every: int = 1000
    keep_running: bool = False
    timeout: float = 600.0
    worker_url: str | None = None    # workers already running (compose): start none


# --- MovieLens -> the event contract (pure) -----------------------------------------------


def item_record(movie: movielens.Movie, ts_ms: int) -> tuple[bytes, bytes]:
    title = f"{movie.title} ({movie.year})" if movie.year else movie.title
    upsert = ItemUpsert(
        v=1,
        event_id=f"item-{movie.item_id}-{ts_ms}",
        item_id=movie.item_id,
        ts=ts_ms,
        title=title,
        category=movie.genres[0].lower() if movie.genres else "",
        attributes={"genres": " ".join(movie.genres),
                    **({"year": movie.year} if movie.year else {})},
    )
    return movie.item_id.encode(), _encode(upsert)


def profile_of(user: movielens.MovieUser, ts_ms: int) -> UserProfile:
    return UserProfile(
        v=1,
        event_id=f"profile-{user.user_id}-{ts_ms}",
        user_id=user.user_id,
        ts=ts_ms,
        age_band=user.age,
        gender=user.gender,
        occupation=user.occupation,
    )


def profile_record(user: movielens.MovieUser, ts_ms: int) -> tuple[bytes, bytes]:
    return user.user_id.encode(), _encode(profile_of(user, ts_ms))


def rating_records(dataset: str, rating: movielens.Rating) -> list[tuple[bytes, bytes]]:
    """Every rating is a `view`; a rating >= 4 is also a `purchase` (a proxy: see docs)."""
    key = rating.user_id.encode()
    base = f"{dataset}-{rating.row}"
    out = [
        (key, _encode(View(v=1, event_id=f"{base}-view", user_id=rating.user_id,
                           ts=rating.ts_ms, item_id=rating.item_id,
                           context={"rating": rating.rating})))
    ]
    if rating.rating >= POSITIVE_RATING:
        out.append((key, _encode(Purchase(v=1, event_id=f"{base}-purchase",
                                          user_id=rating.user_id, ts=rating.ts_ms,
                                          item_id=rating.item_id, price=0.0,
                                          context={"proxy": "rating>=4"}))))
    return out


def event_stream(
    dataset: str, ratings: list[movielens.Rating], options: DemoOptions, max_payload: int
) -> Iterator[tuple[bytes | None, bytes, str]]:
    """(key, value, kind) in time order; kind is "event", "duplicate" or "bad"."""
    sent = 0
    bad_turn = 0
    for rating in ratings:
        for key, value in rating_records(dataset, rating):
            yield key, value, "event"
            sent += 1
            if options.duplicate_every and sent % options.duplicate_every == 0:
                yield key, value, "duplicate"
            if options.bad_every and sent % options.bad_every == 0:
                samples = bad_event_samples(rating.user_id, f"bad-{sent}", max_payload)
                sample: BadSample = samples[bad_turn % len(samples)]
                bad_turn += 1
                yield sample.key, sample.value, "bad"


# --- watching the worker ------------------------------------------------------------------


class Display:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tty = sys.stdout.isatty()
        self._last_plain = 0.0

    def line(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\x1b[2K" + text + "\n")
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def status(self, text: str, final: bool = False) -> None:
        stamp = f"[{time.monotonic() - self.started:7.1f}s] "
        if self.tty and not final:
            sys.stdout.write("\r\x1b[2K" + stamp + text)
            sys.stdout.flush()
        elif final or time.monotonic() - self._last_plain >= 2.0:
            self._last_plain = time.monotonic()
            self.line(stamp + text)


async def _tail(settings: Settings, display: Display, stop: asyncio.Event,
                counters: Counter[str], titles: dict[str, str]) -> None:
    """Print dead letters and recommendations as they arrive."""
    consumer = AIOKafkaConsumer(
        settings.topic_deadletter,
        settings.topic_recommendations,
        bootstrap_servers=settings.bootstrap_servers(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # no group: every partition, from the start
        **client_security(settings),
    )
    await consumer.start()
    try:
        decode_rec = msgspec.json.Decoder(Recommendation)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for tp, messages in batches.items():
                for message in messages:
                    if tp.topic == settings.topic_deadletter:
                        counters["deadletters"] += 1
                        h = read_headers(message.headers)
                        display.line(
                            f"  dead letter from {h.get('topic')}[{h.get('partition')}]"
                            f"@{h.get('offset')}: {h.get('reason')}: {h.get('detail', '')[:90]}"
                        )
                    else:
                        counters["recommendations"] += 1
                        rec = decode_rec.decode(message.value)
                        top = "; ".join(
                            f"{titles.get(i.item_id, i.item_id)} ({i.explanation.text})"
                            for i in rec.items[:3]
                        )
                        display.line(f"  for user {rec.user_id}: {top}")
    finally:
        await consumer.stop()


# --- the job ------------------------------------------------------------------------------


def _start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # the demo runs on the embedded broker when no broker is configured: its worker
            # is allowed to (a worker started by hand is not, unless told)
            env={**os.environ, "STREAMREC_EMBEDDED_BROKER": "true"} if settings.embedded
            else dict(os.environ),
        )


async def _wait_for_catalogue(metrics_url: str, expected: int, display: Display,
                              within: float = 300.0) -> None:
    """Events are only meaningful once the items they name are embedded and indexed."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        samples = await asyncio.to_thread(scrape, metrics_url)
        loaded = int(total(samples, "streamrec_catalogue_items"))
        display.status(f"embedding and indexing the catalogue: {loaded:,}/{expected:,} items")
        if loaded >= expected:
            display.status(f"catalogue ready: {loaded:,} items", final=True)
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("the catalogue was not indexed in time")


async def _produce(settings: Settings, options: DemoOptions, display: Display,
                   produced: Counter[str], ends: dict[tuple[str, int], int],
                   metrics_url: str) -> None:
    """Publish the catalogue, the profiles and the event stream; ``ends`` tracks the next
    offset of every partition written, from the broker's acknowledgements."""

    acknowledged = end_tracker(ends)

    async def send(topic: str, value: bytes, key: bytes | None) -> None:
        (await producer.send(topic, value, key=key)).add_done_callback(acknowledged)

    dataset = options.dataset
    movies = movielens.movies(dataset)
    people = movielens.users(dataset)
    ratings = movielens.ratings(dataset)
    if options.limit is not None:
        ratings = ratings[: options.limit]
    start_ts = ratings[0].ts_ms if ratings else int(time.time() * 1000)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(), linger_ms=5, **client_security(settings)
    )
    await producer.start()
    try:
        for movie in movies:
            item_key, item_value = item_record(movie, start_ts)
            await send(settings.topic_items, item_value, item_key)
            produced["items"] += 1
        for person in people:
            user_key, user_value = profile_record(person, start_ts)
            await send(settings.topic_users, user_value, user_key)
            produced["users"] += 1
        await producer.flush()
        display.line(f"published {len(movies):,} items and {len(people):,} user profiles "
                     f"of {dataset}")
        await _wait_for_catalogue(metrics_url, len(movies), display)
        display.line(f"streaming {len(ratings):,} ratings as events")
        began = time.monotonic()
        for key, value, kind in event_stream(dataset, ratings, options, settings.max_payload_bytes):
            await send(settings.topic_events, value, key)
            produced[kind] += 1
            sent = produced["event"] + produced["duplicate"] + produced["bad"]
            if options.rate > 0:
                ahead = sent / options.rate - (time.monotonic() - began)
                if ahead > 0.01:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()


async def run_demo(settings: Settings, options: DemoOptions) -> int:
    display = Display()
    broker = start_if_needed(settings)
    if broker is not None:
        display.line(f"embedded broker (Tansu, memory-only) on {broker.bootstrap}")
    worker: subprocess.Popen[bytes] | None = None
    lag: GroupLag | None = None
    stop = asyncio.Event()
    seen: Counter[str] = Counter()
    try:
        cluster = await wait_until_ready(settings)
        check_embedded(settings, str(cluster.get("cluster_id") or ""))
        await ensure_topics(settings)
        if options.worker_url:
            base = options.worker_url.rstrip("/")
            display.line(f"waiting for the worker at {base}")
        else:
            log_path = settings.data_dir / "worker.log"
            worker = _start_worker(settings, log_path)
            base = f"http://{settings.web_host}:{settings.web_port}"
            display.line(f"worker starting (log: {log_path}, metrics: {base}/metrics)")
        await wait_worker_ready(base, worker, within=options.timeout)
        display.line("worker ready")
        titles = {m.item_id: f"{m.title} ({m.year})" if m.year else m.title
                  for m in movielens.movies(options.dataset)}
        tail = asyncio.create_task(_tail(settings, display, stop, seen, titles))
        produced: Counter[str] = Counter()
        ends: dict[tuple[str, int], int] = {}
        lag = GroupLag(settings, settings.app_id)
        await lag.start()
        producing = asyncio.create_task(
            _produce(settings, options, display, produced, ends, base + "/metrics"))
        deadline = time.monotonic() + options.timeout
        history: deque[tuple[float, float]] = deque(maxlen=8)  # (time, handled): ~4 s window
        while True:
            await asyncio.sleep(0.5)
            if worker is not None and worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}; see "
                                   f"{settings.data_dir / 'worker.log'}")
            if producing.done() and producing.exception() is not None:
                raise RuntimeError("producing failed") from producing.exception()
            samples = await asyncio.to_thread(scrape, base + "/metrics")
            behind = await lag.lag(dict(ends))
            handled = total(samples, "streamrec_input_records_total", topic="events")
            total_sent = produced["event"] + produced["duplicate"] + produced["bad"]
            by_type = " ".join(
                f"{t} {int(total(samples, 'streamrec_events_total', type=t)):,}"
                for t in ("view", "purchase")
            )
            history.append((time.monotonic(), handled))
            (t0, h0), (t1, h1) = history[0], history[-1]
            rate = (h1 - h0) / (t1 - t0) if t1 > t0 else 0.0
            text = (
                f"sent {total_sent:,} | accepted {by_type} | duplicates dropped "
                f"{int(total(samples, 'streamrec_input_records_total', outcome='duplicate')):,}"
                f" (injected {produced['duplicate']:,}) | dead letters "
                f"{int(total(samples, 'streamrec_deadletters_total')):,} (injected "
                f"{produced['bad']:,}) | recommendations {seen['recommendations']:,} | "
                f"{rate:,.0f} records/s | lag {behind:,}"
            )
            done = producing.done() and behind == 0
            display.status(text, final=done)
            if done and not options.keep_running:
                break
            if time.monotonic() > deadline and not options.keep_running:
                display.line("timed out before the worker caught up")
                return 1
        if seen["recommendations"] == 0:
            display.line("no recommendation was published: see the worker log")
        stop.set()
        await asyncio.wait_for(tail, timeout=10)
        return 0
    finally:
        stop.set()
        if lag is not None:
            await lag.close()
        stop_process(worker, grace=30)
        if broker is not None:
            broker.stop()
