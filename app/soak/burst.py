"""`streamrec soak burst`: backpressure. A burst of ten times the usual rate, with a reader
of the output that has stopped reading, through one real worker on Apache Kafka.

One worker (defaults, 4 partitions). A producer streams views of ``users`` users (picked
at random, each user's in order) at ``rate`` a second for ``steady_seconds``, then at
``burst`` times that rate for ``burst_seconds``, then at ``rate`` again until the worker
has caught up (and ``tail_seconds`` more). Beside it a consumer of the recommendations
topic, in a group of its own, reads once and then never again: a downstream service that
has stalled. Every second the soak samples what the broker acknowledged, how far the
worker's group trails it (committed offsets, from the broker: the truth), the lag the
worker itself reports (``streamrec_consumer_lag_records``, what the dashboards and the
``StreamRecConsumerLagGrowing`` alert read), its events processed and its resident memory.

The verdict:

- the worker never exited, and its peak RSS stayed under ``max_rss_mb``;
- the lag was visible: from the burst on, the worker's own gauge summed over the samples is
  at least 3/4 of the broker's (it is refreshed every 5 s, so it trails a rising lag by up
  to 5 s of it; a gauge of the records not yet *read* measured 0.36, this one 0.97);
- it caught up on its own: after the burst its group's lag fell back to the steady phase's
  level within ``within`` seconds;
- nothing was lost on the way: every user's event count in the compacted ``user-state``
  changelog equals the events the broker acknowledged for them;
- the stalled reader held it back in nothing: its unread lists are reported (they wait in
  the topic, bounded by its retention, not in the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from app.broker.admin import GroupLag, end_tracker, ensure_topics, wait_until_ready
from app.broker.apache import start_unless_given
from app.contract.samples import good_view
from app.harness import WorkerRun, wait_worker_ready
from app.metrics import scrape, total
from app.plots import pyplot
from app.soak.crash import TS, applied_counts
from app.soak.fuzz import RssSampler

Say = Callable[[str], None]
Progress = Callable[[str, int, int], None]   # (phase, done, of)
PARTITIONS = 4
ALERT_LAG = 10_000   # deploy/prometheus/alerts.yml, StreamRecConsumerLagGrowing
TRACKED = 0.75       # the share of the broker's lag the worker's gauge must report


@dataclass
class Plan:
    users: int = 2_000
    rate: float = 200.0
    burst: float = 10.0
    steady_seconds: float = 30.0
    burst_seconds: float = 30.0
    tail_seconds: float = 10.0
    within: float = 600.0          # after the burst, to catch up
    max_rss_mb: float = 1_000.0
    seed: int = 0
    worker_settings: dict[str, str] = field(default_factory=dict)


@dataclass
class Sample:
    at: float                 # seconds since the producer started
    acknowledged: int         # events the broker acknowledged so far
    lag: int                  # of the worker's group, committed offsets against the acks
    reported_lag: float       # the worker's own gauge (-1: /metrics did not answer)
    processed: float          # the worker's events counter (-1: /metrics did not answer)
    rss_mb: float


class Stream:
    """Views of random users, each user's in order, at a rate that the soak changes; counts
    what the broker acknowledged per user and the end offset of every partition."""

    def __init__(self, bootstrap: str, topic: str, users: list[str], seed: int) -> None:
        self.bootstrap, self.topic, self.users = bootstrap, topic, users
        self.rate = 0.0
        self.acked = dict.fromkeys(users, 0)
        self.failed = 0
        self.ends: dict[tuple[str, int], int] = {}
        self._next = dict.fromkeys(users, 0)
        self._rng = random.Random(seed)  # noqa: S311 - a workload, not a secret
        self._stop = asyncio.Event()

    @property
    def acknowledged(self) -> int:
        return sum(self.acked.values())

    def stop(self) -> None:
        self._stop.set()

    def _done(self, user: str) -> Callable[[asyncio.Future[Any]], None]:
        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                self.failed += 1
            else:
                self.acked[user] += 1
        return done

    async def run(self) -> None:
        """Sends until stopped, following ``rate`` (changed from outside) in 10 ms steps.
        A send the broker refuses is counted, not repeated: this soak has no faults, and a
        refused event is simply not in the reference."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5,
                                    max_batch_size=256 * 1024)
        await producer.start()
        track = end_tracker(self.ends)
        owed, last = 0.0, time.monotonic()
        try:
            while not self._stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                owed += self.rate * (now - last)
                last = now
                while owed >= 1:
                    owed -= 1
                    user = self._rng.choice(self.users)
                    n = self._next[user]
                    self._next[user] = n + 1
                    value = good_view(user, f"{user}-{n}", f"item-{n % 500}", TS + n)
                    future = await producer.send(self.topic, value, key=user.encode())
                    future.add_done_callback(track)
                    future.add_done_callback(self._done(user))
            await producer.flush()
        finally:
            await producer.stop()


class StalledReader:
    """A consumer of the recommendations topic (its own group) that reads a first list,
    commits it and then stops polling: a downstream service that hung."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed")
        self.read = 0

    async def start(self) -> None:
        await self.consumer.start()

    async def read_once(self, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.consumer.getone(), within)
            self.read = 1
            await self.consumer.commit()

    async def unread(self) -> int:
        """Lists in the topic past what this reader committed."""
        partitions = [TopicPartition(self.topic, p)
                      for p in self.consumer.partitions_for_topic(self.topic) or ()]
        ends = await self.consumer.end_offsets(partitions)
        behind = 0
        for tp in partitions:
            committed = await self.consumer.committed(tp)
            behind += ends[tp] - (committed or 0)
        return behind

    async def stop(self) -> None:
        await self.consumer.stop()


def _look(url: str) -> tuple[float, float]:
    """The worker's own lag gauge and events processed (-1, -1 when it did not answer)."""
    try:
        samples = scrape(url, timeout=2.0)
    except OSError:
        return -1.0, -1.0
    return (total(samples, "streamrec_consumer_lag_records"),
            total(samples, "streamrec_input_records_total", topic="events"))


async def run(plan: Plan, broker: str | None, say: Say, progress: Progress,
              workdir: Path | None = None) -> dict[str, Any]:
    """The soak (module docstring)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="streamrec-burst-"))
    broker, local = await start_unless_given(broker, workdir, say)
    run_ = WorkerRun(broker, workdir, PARTITIONS, name="burst", **plan.worker_settings)
    settings = run_.settings
    users = [f"user-{n}" for n in range(plan.users)]
    stream = Stream(broker, settings.topic_events, users, plan.seed)
    reader = StalledReader(broker, settings.topic_recommendations,
                           f"{settings.app_id}-stalled-reader")
    samples: list[Sample] = []
    sending: asyncio.Task[None] | None = None
    try:
        await wait_until_ready(settings)
        await ensure_topics(settings)
        run_.start_worker()
        await run_.wait_metric("streamrec_catalogue_items", 0, within=180)
        await wait_worker_ready(run_.base_url, run_.worker, within=180)
        assert run_.worker is not None
        rss = RssSampler(run_.worker.pid)
        await reader.start()
        lag = GroupLag(settings, settings.app_id)
        await lag.start()
        stream.rate = plan.rate
        sending = asyncio.create_task(stream.run())
        started = time.monotonic()
        burst_from = plan.steady_seconds
        burst_to = burst_from + plan.burst_seconds
        say(f"{plan.rate:.0f} events/s for {plan.steady_seconds:.0f} s, then "
            f"{plan.rate * plan.burst:.0f}/s for {plan.burst_seconds:.0f} s, then "
            f"{plan.rate:.0f}/s until caught up; a reader of the lists stalls after one")
        reading = asyncio.create_task(reader.read_once(within=plan.steady_seconds))
        caught_up_at: float | None = None
        steady_peak = 0
        try:
            while True:
                await asyncio.sleep(1.0)
                at = time.monotonic() - started
                stream.rate = plan.rate * (plan.burst if burst_from <= at < burst_to else 1.0)
                reported, processed = await asyncio.to_thread(_look, run_.metrics_url)
                try:
                    behind = await lag.lag(stream.ends)
                except KafkaError:
                    behind = samples[-1].lag if samples else 0
                samples.append(Sample(round(at, 1), stream.acknowledged, behind, reported,
                                      processed, round(rss.rss_mb(), 1)))
                progress("soak", int(min(at, burst_to)), int(burst_to))
                if not run_.alive():
                    say("the worker exited")
                    break
                if at < burst_from:
                    steady_peak = max(steady_peak, behind)
                elif at >= burst_to:
                    if caught_up_at is None and behind <= _settled(steady_peak, plan.rate):
                        caught_up_at = at
                        say(f"caught up {at - burst_to:.0f} s after the burst")
                    if caught_up_at is not None and at >= caught_up_at + plan.tail_seconds:
                        break
                    if at - burst_to > plan.within:
                        say(f"not caught up {plan.within:.0f} s after the burst")
                        break
        finally:
            stream.stop()
            await sending
            await lag.close()
            await reading
        report = await _settle(plan, run_, stream, reader, samples, steady_peak,
                               caught_up_at, say, progress)
        return report
    finally:
        if sending is not None and not sending.done():
            sending.cancel()
        with contextlib.suppress(Exception):
            await reader.stop()
        if run_.worker is not None:
            run_.stop_worker()
        if local is not None:
            await asyncio.to_thread(local.stop)


def _settled(steady_peak: int, rate: float) -> int:
    """The lag that counts as caught up: what the steady phase showed (commits trail by
    their interval), and never less than two seconds of the steady rate."""
    return max(steady_peak, int(2 * rate))


async def _settle(plan: Plan, run_: WorkerRun, stream: Stream, reader: StalledReader,
                  samples: list[Sample], steady_peak: int, caught_up_at: float | None,
                  say: Say, progress: Progress) -> dict[str, Any]:
    """Wait until every acknowledged event is applied (or nothing moves for a minute),
    then the verdict (module docstring)."""
    users = list(stream.acked)
    expected = stream.acknowledged
    say(f"{expected:,} events acknowledged; waiting for every one to be applied")
    counts = await applied_counts(run_.settings, stream.acked, progress, "applied",
                                  run_.alive)
    lost = sum(max(0, stream.acked[u] - counts.get(u, 0)) for u in users)
    doubled = sum(max(0, counts.get(u, 0) - stream.acked[u]) for u in users)
    unread = await reader.unread()
    burst_to = plan.steady_seconds + plan.burst_seconds
    peak = max(samples, key=lambda s: s.lag, default=None)
    reported_peak = max((s.reported_lag for s in samples), default=-1.0)
    since_burst = [s for s in samples if s.at >= plan.steady_seconds]
    tracked = (sum(max(s.reported_lag, 0.0) for s in since_burst)
               / max(sum(s.lag for s in since_burst), 1))
    in_burst = [s for s in samples if plan.steady_seconds <= s.at < burst_to]
    rates = [rate for _, rate in _per_second(samples, "processed")]
    alerting = [s.at for s, rising in zip(samples, _rising(samples), strict=True)
                if s.reported_lag > ALERT_LAG and rising]
    report: dict[str, Any] = {
        "users": plan.users, "rate": plan.rate, "burst": plan.burst,
        "steady_seconds": plan.steady_seconds, "burst_seconds": plan.burst_seconds,
        "seed": plan.seed, "worker_settings": plan.worker_settings,
        "worker_survived": run_.alive(),
        "events": expected, "sends_refused": stream.failed,
        "burst_events_per_second": round(
            (in_burst[-1].acknowledged - in_burst[0].acknowledged)
            / max(in_burst[-1].at - in_burst[0].at, 1e-9)) if len(in_burst) > 1 else 0,
        "processed_per_second_peak": round(max(rates, default=0.0)),
        "lag": {"steady_peak": steady_peak, "peak": peak.lag if peak else 0,
                "peak_at": peak.at if peak else 0.0,
                "reported_peak": round(reported_peak), "reported_share": round(tracked, 3),
                "alert_condition_seconds": len(alerting)},
        "caught_up_seconds_after_burst": (round(caught_up_at - burst_to, 1)
                                          if caught_up_at is not None else None),
        "lost": lost, "applied_twice": doubled,
        "stalled_reader": {"read": reader.read, "unread_lists": unread},
        "rss_mb": {"peak": max((s.rss_mb for s in samples), default=0.0),
                   "steady_median": _median([s.rss_mb for s in samples
                                             if s.at < plan.steady_seconds]),
                   "limit": plan.max_rss_mb},
        "samples": [s.__dict__ for s in samples],
    }
    report["failures"] = _failures(report)
    report["passed"] = not report["failures"]
    return report


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else 0.0


def _per_second(samples: list[Sample], what: str) -> list[tuple[float, float]]:
    """(time, rate) of a counter of the samples (``acknowledged``, ``processed``) between
    consecutive ones where both have it (a /metrics that did not answer reads -1)."""
    return [(b.at, (getattr(b, what) - getattr(a, what)) / max(b.at - a.at, 1e-9))
            for a, b in itertools.pairwise(samples)
            if getattr(a, what) >= 0 and getattr(b, what) >= 0]


def _rising(samples: list[Sample], window: int = 10) -> list[bool]:
    """Per sample: the worker's reported lag higher than ``window`` samples before (the
    alert's ``deriv(...) > 0``, over the soak's shorter span)."""
    return [n >= window and s.reported_lag > samples[n - window].reported_lag
            for n, s in enumerate(samples)]


def _failures(report: dict[str, Any]) -> list[str]:
    failures = []
    if not report["worker_survived"]:
        failures.append("the worker exited")
    if report["rss_mb"]["peak"] > report["rss_mb"]["limit"]:
        failures.append(f"peak RSS {report['rss_mb']['peak']} MB over the limit")
    lag = report["lag"]
    if lag["reported_share"] < TRACKED:
        failures.append(f"the lag the worker reported came to {lag['reported_share']:.0%} "
                        f"of the broker's (at least {TRACKED:.0%} wanted)")
    if report["caught_up_seconds_after_burst"] is None:
        failures.append("not caught up after the burst")
    if report["lost"] or report["applied_twice"]:
        failures.append(f"{report['lost']} events lost, {report['applied_twice']} applied "
                        "twice")
    return failures


def markdown(report: dict[str, Any]) -> str:
    lag, rss = report["lag"], report["rss_mb"]
    caught = report["caught_up_seconds_after_burst"]
    return "\n".join([
        f"`streamrec soak burst` ({report['users']:,} users, {report['rate']:.0f} events/s, "
        f"x{report['burst']:g} for {report['burst_seconds']:.0f} s, seed {report['seed']}"
        + "".join(f", {k}={v}" for k, v in report.get("worker_settings", {}).items())
        + f"): {'PASSED' if report['passed'] else 'FAILED'}",
        "",
        "| what | |",
        "| --- | ---: |",
        f"| events acknowledged (sends refused) | {report['events']:,} "
        f"({report['sends_refused']}) |",
        f"| burst, events/s acknowledged | {report['burst_events_per_second']:,} |",
        f"| worker's peak, events/s processed | {report['processed_per_second_peak']:,} |",
        f"| group lag, steady / peak (broker) | {lag['steady_peak']:,} / {lag['peak']:,} "
        f"at {lag['peak_at']:.0f} s |",
        f"| lag the worker reported: peak; summed from the burst on, share of the "
        f"broker's | {lag['reported_peak']:,}; {lag['reported_share']:.0%} |",
        f"| seconds the lag alert's condition held (> {ALERT_LAG:,} and rising) | "
        f"{lag['alert_condition_seconds']} |",
        "| caught up after the burst | "
        + (f"{caught:.0f} s" if caught is not None else "**never**") + " |",
        f"| events lost / applied twice | {report['lost']} / {report['applied_twice']} |",
        f"| RSS: steady median / peak (limit) | {rss['steady_median']:.0f} / "
        f"{rss['peak']:.0f} MB ({rss['limit']:.0f}) |",
        f"| stalled reader: lists read / left unread | {report['stalled_reader']['read']} / "
        f"{report['stalled_reader']['unread_lists']:,} |",
        *(f"| failure | {failure} |" for failure in report["failures"]),
    ])


def plot(report: dict[str, Any], target: Path) -> bool:
    """Events/s sent and processed, the lag (the broker's and the worker's own) and RSS
    over the soak, the burst shaded."""
    plt = pyplot()
    if plt is None:
        return False
    samples = [Sample(**s) for s in report["samples"]]
    at = [s.at for s in samples]
    figure, (rates, lags, memory) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for what, label in (("acknowledged", "acknowledged by the broker"),
                        ("processed", "processed by the worker")):
        series = _per_second(samples, what)
        rates.plot([t for t, _ in series], [r for _, r in series], label=label)
    rates.set_ylabel("events/s")
    rates.legend()
    lags.plot(at, [s.lag for s in samples], label="group lag (broker)")
    lags.plot(at, [max(s.reported_lag, 0) for s in samples],
              label="streamrec_consumer_lag_records")
    lags.axhline(ALERT_LAG, color="red", linestyle="--", label="alert threshold")
    lags.set_ylabel("records behind")
    lags.legend()
    memory.plot(at, [s.rss_mb for s in samples])
    memory.axhline(report["rss_mb"]["limit"], color="red", linestyle="--", label="limit")
    memory.set_ylabel("worker RSS, MB")
    memory.set_xlabel("seconds")
    memory.legend()
    start = report["steady_seconds"]
    for axis in (rates, lags, memory):
        axis.axvspan(start, start + report["burst_seconds"], color="orange", alpha=0.15)
    caught = report["caught_up_seconds_after_burst"]
    figure.suptitle(f"x{report['burst']:g} burst: caught up "
                    + (f"{caught:.0f} s after it" if caught is not None else "never")
                    + f", {report['lost']} lost, peak RSS {report['rss_mb']['peak']:.0f} MB")
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return True
