"""`streamrec soak fuzz`: hostile records through a real worker on a real broker, every one
accounted for.

One worker (defaults, 4 partitions; a forgotten user deleted at once, without a marker:
``STREAMREC_FORGET_GUARD_SECONDS=0``, since the oracle judges records in the order the
broker acknowledges them, which across topics is not the order of their timestamps that
markers go by; tests/integration/test_forget.py tests the markers) on Apache Kafka.
``records`` generated records (:mod:`app.contract.fuzz`: ~75% mutated past the contract, the
rest valid) are produced to the four input topics, and a few hundred undecodable records
onto the compacted topics every worker follows (catalogue, models), half before the worker
starts, half while it works. Meanwhile the worker's resident memory is sampled every second.
Then, once the worker's group has committed everything:

- every record the contract's validator rejects is on the dead-letter topic **exactly once,
  at its source position, with the validator's reason**; nothing else is;
- the worker's counters agree: accepted, duplicate and rejected per topic, users forgotten;
- the state is exact: every user's event counts in the compacted ``user-state`` changelog
  equal those of the valid events produced for them (a duplicate event id applied once);
  the catalogue holds exactly the items the valid item records leave;
- the worker never exited, and its peak RSS stayed under ``max_rss_mb``.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from app.broker.admin import GroupLag, end_tracker, ensure_topics, wait_until_ready
from app.broker.apache import start_unless_given
from app.contract.deadletter import read_headers
from app.contract.fuzz import Hostile, expected, followed_records, hostile_records
from app.contract.records import ItemOp
from app.contract.validate import Validators, validators
from app.core.state import ItemState, StateCodec, UserState, apply_batch, fold_event, fold_item
from app.harness import WorkerRun
from app.metrics import scrape, total
from app.plots import pyplot
from app.worker.agents import limits

Say = Callable[[str], None]
Progress = Callable[[str, int, int], None]   # (phase, done, of)
PARTITIONS = 4


@dataclass
class Oracle:
    """What the worker must end with, computed from the records as they are produced: the
    contract's validator on each, then the same folds and dedupe window the worker uses,
    per key in production order (= the partition's order)."""

    checks: Validators
    window: int
    outcome: dict[tuple[str, int, int], str] = field(default_factory=dict)  # "" = accepted
    accepted: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    forgotten: int = 0
    refused: Counter[str] = field(default_factory=Counter)   # records the broker refused
    users: dict[bytes, UserState] = field(default_factory=dict)
    items: dict[bytes, ItemState] = field(default_factory=dict)
    _seen: dict[tuple[str, bytes], tuple[str, ...]] = field(default_factory=dict)

    def judge(self, record: Hostile, now_ms: int) -> str:
        """The record's expected outcome ("" applied or a duplicate, "forget", or the
        rejection's reason), with the oracle's state moved on as the worker's will be."""
        rejection = expected(self.checks, record.topic, record.key, record.value, now_ms)
        if rejection is not None:
            self.rejected[record.topic] += 1
            self.reasons[rejection.reason.value] += 1
            return rejection.reason.value
        assert record.key is not None
        if record.value is None:   # a users tombstone: the user is forgotten, everywhere
            self.forgotten += 1
            self.users.pop(record.key, None)
            for topic in ("events", "feedback", "users"):
                self._seen.pop((topic, record.key), None)
            return "forget"
        decoded = getattr(self.checks, record.topic)(record.key, record.value, now_ms)
        slot = (record.topic, record.key)
        before = self._seen.get(slot, ())
        if decoded.event_id in before:
            self.duplicates[record.topic] += 1
            return ""
        self._seen[slot] = ((*before, decoded.event_id))[-self.window:]
        self.accepted[record.topic] += 1
        if record.topic == "events":
            self.users[record.key] = apply_batch(
                self.users.get(record.key, UserState()), [decoded], self.window,
                fold_event).state
        elif record.topic == "items":
            item: ItemOp = decoded
            self.items[record.key] = fold_item(self.items.get(record.key, ItemState()), item)
        return ""

    def live_items(self) -> int:
        return sum(state.item is not None for state in self.items.values())


async def _produce_followed(bootstrap: str, topics: list[str], count: int, seed: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    futures: list[asyncio.Future[Any]] = []
    try:
        for n, topic in enumerate(topics):
            for key, value in followed_records(count, seed * 7 + n):
                futures.append(await producer.send(topic, value, key=key))
        await producer.flush()
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        sent = sum(not isinstance(o, BaseException) for o in outcomes)
    finally:
        await producer.stop()
    return sent


async def _produce(run: WorkerRun, oracle: Oracle, count: int, seed: int,
                   ends: dict[tuple[str, int], int], progress: Progress,
                   halfway: Callable[[], Any]) -> None:
    """Produce the hostile stream; each record's expected outcome is filed under the
    position the broker acknowledges."""
    topic_of = {"events": run.settings.topic_events, "items": run.settings.topic_items,
                "feedback": run.settings.topic_feedback, "users": run.settings.topic_users}
    producer = AIOKafkaProducer(bootstrap_servers=run.settings.bootstrap_servers(),
                                linger_ms=5, max_batch_size=256 * 1024,
                                max_request_size=2 * 1024 * 1024)
    await producer.start()
    track = end_tracker(ends)

    def filed(record: Hostile) -> Callable[[asyncio.Future[Any]], None]:
        def done(future: asyncio.Future[Any]) -> None:
            track(future)
            if future.cancelled() or future.exception() is not None:
                error = "cancelled" if future.cancelled() else type(future.exception()).__name__
                oracle.refused[f"{'+'.join(record.mutations) or 'valid'}: {error}"] += 1
                return
            meta = future.result()
            # judged once acknowledged, in each partition's order: the worker's order
            outcome = oracle.judge(record, int(time.time() * 1000))
            oracle.outcome[(meta.topic, meta.partition, meta.offset)] = outcome
        return done

    try:
        for n, record in enumerate(hostile_records(count, seed)):
            future = await producer.send(topic_of[record.topic], record.value, key=record.key)
            future.add_done_callback(filed(record))
            if n % 2000 == 0:
                progress("producing", n, count)
            if n == count // 2:
                await halfway()
        await producer.flush()
        progress("producing", count, count)
    finally:
        await producer.stop()


class RssSampler:
    """The worker's resident memory every second (/proc), while the soak runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []   # (seconds since start, MB)
        self._task: asyncio.Task[None] | None = None
        self._start = time.monotonic()

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    async def _loop(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._start, self.rss_mb()))
            await asyncio.sleep(1.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def peak(self) -> float:
        return max((mb for _, mb in self.samples), default=0.0)


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every committed record of ``topic`` up to its end offsets now (read_committed: the
    records of aborted transactions are skipped; on topics written without transactions
    that is every record)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20,
                                fetch_max_bytes=64 << 20, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p)
                      for p in (consumer.partitions_for_topic(topic)
                                or await _partitions(consumer, topic))]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        remaining = {tp for tp, end in ends.items() if end > 0}
        while remaining:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for messages in batches.values():
                records.extend(messages)
            # by position, not the last record's offset: a transaction's commit marker
            # takes an offset and is never handed out
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return records
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


def _dead_letter_check(oracle: Oracle, dead: list[Any]) -> dict[str, Any]:
    by_position: Counter[tuple[str, int, int]] = Counter()
    wrong: list[str] = []
    unexpected = 0
    for record in dead:
        headers = read_headers(record.headers)
        position = (headers.get("topic", ""), int(headers.get("partition", -1)),
                    int(headers.get("offset", -1)))
        by_position[position] += 1
        want = oracle.outcome.get(position)
        if want is None or want in ("", "forget"):
            unexpected += 1
        elif headers.get("reason") != want:
            wrong.append(f"{position}: {headers.get('reason')} (expected {want})")
    bad_positions = {p for p, o in oracle.outcome.items() if o not in ("", "forget")}
    missing = len(bad_positions - set(by_position))
    twice = sum(1 for p, n in by_position.items() if n > 1)
    return {"dead_letters": len(dead), "expected": len(bad_positions), "missing": missing,
            "twice": twice, "unexpected": unexpected, "wrong_reason": len(wrong),
            "wrong_examples": wrong[:5]}


def _state_check(oracle: Oracle, changelog: list[Any]) -> dict[str, Any]:
    latest: dict[bytes, bytes | None] = {}
    for record in changelog:
        latest[record.key] = record.value
    codec = StateCodec(UserState)
    held = {key: codec.decode(value) for key, value in latest.items() if value is not None}
    differ = [key for key in oracle.users.keys() | held.keys()
              if (oracle.users[key].counts if key in oracle.users else {})
              != (held[key].counts if key in held else {})]
    return {"users": len(oracle.users), "users_in_changelog": len(held),
            "users_differing": len(differ),
            "examples": [repr(k)[:40] for k in differ[:5]]}


async def run(records: int, seed: int, broker: str | None, max_rss_mb: float, say: Say,
              progress: Progress, followed: int | None = None,
              workdir: Path | None = None,
              worker_settings: dict[str, str] | None = None) -> dict[str, Any]:
    """The soak (module docstring); ``worker_settings`` (e.g. ``{"rocksdb_block_cache_mb":
    "2048"}``) are the worker's STREAMREC_* settings beside the soak's own."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="streamrec-soak-"))
    broker, local = await start_unless_given(broker, workdir, say)
    run_ = WorkerRun(broker, workdir, PARTITIONS, name="soak",
                     **{"forget_guard_seconds": "0", **(worker_settings or {})})
    settings = run_.settings
    followed = max(20, records // 2000) if followed is None else followed
    followed_topics = [settings.topic_catalogue, settings.topic_models]
    oracle = Oracle(validators(limits(settings)), settings.dedup_window)
    ends: dict[tuple[str, int], int] = {}
    try:
        await wait_until_ready(settings)
        await ensure_topics(settings)
        say(f"{followed} undecodable records on each followed topic, before the worker starts")
        await _produce_followed(broker, followed_topics, followed // 2, seed)
        run_.start_worker()
        await run_.wait_metric("streamrec_catalogue_items", 0, within=180)
        assert run_.worker is not None
        sampler = RssSampler(run_.worker.pid)
        sampler.start()

        async def halfway() -> None:
            await _produce_followed(broker, followed_topics, followed - followed // 2,
                                    seed + 1)

        say(f"producing {records:,} generated records (seed {seed})")
        started = time.monotonic()
        await _produce(run_, oracle, records, seed, ends, progress, halfway)
        produced_seconds = time.monotonic() - started
        lag = GroupLag(settings, settings.app_id)
        await lag.start()
        try:
            while run_.alive():
                try:
                    behind = await lag.lag(ends)
                except KafkaError:   # the group's coordinator not elected yet: ask again
                    behind = records
                if not behind:
                    break
                progress("worker", records - behind, records)
                await asyncio.sleep(1.0)
        finally:
            await lag.close()
        progress("worker", records, records)
        worked_seconds = time.monotonic() - started
        alive = run_.alive()
        report: dict[str, Any] = {
            "records": records, "seed": seed, "followed_per_topic": followed,
            "worker_settings": worker_settings or {},
            "worker_survived": alive, "produce_seconds": round(produced_seconds, 1),
            "seconds": round(worked_seconds, 1),
            "records_per_second": round(records / worked_seconds),
            "oracle": {"accepted": dict(oracle.accepted), "duplicates": dict(oracle.duplicates),
                       "rejected": dict(oracle.rejected), "reasons": dict(oracle.reasons),
                       "forgotten": oracle.forgotten,
                       "refused_by_the_broker": dict(oracle.refused)},
        }
        if alive:
            await _settle(run_, oracle, report, say)
        await sampler.stop()
        report["rss_mb"] = {"peak": round(sampler.peak(), 1),
                            "first_half_peak": round(_half_peak(sampler.samples, 0), 1),
                            "second_half_peak": round(_half_peak(sampler.samples, 1), 1),
                            "limit": max_rss_mb}
        report["rss_samples"] = [(round(t, 1), round(mb, 1)) for t, mb in sampler.samples]
        report["error_log_lines"] = sum(" ERROR " in line or "ERROR" in line.split(" ", 3)[:3]
                                        for line in run_.log.read_text(errors="replace")
                                        .splitlines())
        report["failures"] = _failures(report)
        report["passed"] = not report["failures"]
        return report
    finally:
        if run_.worker is not None:
            run_.stop_worker()
        if local is not None:
            await asyncio.to_thread(local.stop)


async def _settle(run_: WorkerRun, oracle: Oracle, report: dict[str, Any], say: Say) -> None:
    """The checks once the worker has committed everything (module docstring)."""
    settings = run_.settings
    live = oracle.live_items()
    say(f"waiting for the catalogue to hold the {live:,} live items")
    with contextlib.suppress(TimeoutError):
        await run_.wait_metric("streamrec_catalogue_items", live, within=300)
    samples = await asyncio.to_thread(scrape, run_.metrics_url)
    report["catalogue"] = {"expected": live,
                           "held": total(samples, "streamrec_catalogue_items")}
    counters: dict[str, Any] = {}
    for topic in ("events", "items", "feedback", "users"):
        counters[topic] = {
            outcome: int(total(samples, "streamrec_input_records_total", topic=topic,
                               outcome=outcome))
            for outcome in ("accepted", "duplicate", "rejected")}
    report["counters"] = counters
    report["forgotten"] = int(total(samples, "streamrec_users_forgotten_total"))
    report["processing_errors"] = {
        dict(labels).get("topic", ""): int(value)
        for (name, labels), value in samples.items()
        if name == "streamrec_processing_errors_total" and value}
    say("reading the dead-letter topic")
    dead = await read_all(settings.bootstrap_servers(), settings.topic_deadletter)
    report["deadletters"] = _dead_letter_check(oracle, dead)
    say("reading the user-state changelog")
    changelog = await read_all(settings.bootstrap_servers(),
                               f"{settings.app_id}-user-state-changelog")
    report["state"] = _state_check(oracle, changelog)


def _half_peak(samples: list[tuple[float, float]], half: int) -> float:
    if not samples:
        return 0.0
    middle = samples[-1][0] / 2
    chosen = [mb for t, mb in samples if (t >= middle) == bool(half)]
    return max(chosen, default=0.0)


def _failures(report: dict[str, Any]) -> list[str]:
    failures: list[str] = []
    if not report["worker_survived"]:
        return ["the worker exited"]
    dead = report["deadletters"]
    for what in ("missing", "twice", "unexpected", "wrong_reason"):
        if dead[what]:
            failures.append(f"dead letters {what}: {dead[what]}")
    oracle, counters = report["oracle"], report["counters"]
    for topic, seen in counters.items():
        want = {"accepted": oracle["accepted"].get(topic, 0),
                "duplicate": oracle["duplicates"].get(topic, 0),
                "rejected": oracle["rejected"].get(topic, 0)}
        if seen != want:
            failures.append(f"{topic} counters {seen}, expected {want}")
    if report["forgotten"] != oracle["forgotten"]:
        failures.append(f"users forgotten {report['forgotten']}, expected {oracle['forgotten']}")
    if report["state"]["users_differing"]:
        failures.append(f"user states differing: {report['state']['users_differing']}")
    catalogue = report["catalogue"]
    if catalogue["held"] != catalogue["expected"]:
        failures.append(f"catalogue holds {catalogue['held']:.0f} items, "
                        f"expected {catalogue['expected']}")
    if report["rss_mb"]["peak"] > report["rss_mb"]["limit"]:
        failures.append(f"peak RSS {report['rss_mb']['peak']} MB over the limit")
    return failures


def markdown(report: dict[str, Any]) -> str:
    dead, rss = report.get("deadletters", {}), report["rss_mb"]
    lines = [
        f"`streamrec soak fuzz --records {report['records']} --seed {report['seed']}`: "
        f"{'PASSED' if report['passed'] else 'FAILED'}",
        "",
        "| what | figure |",
        "| --- | ---: |",
        f"| records produced (+ {report['followed_per_topic']} on each followed topic) "
        f"| {report['records']:,} |",
        f"| worker survived | {'yes' if report['worker_survived'] else '**no**'} |",
        f"| rejected by the contract (expected dead letters) | {dead.get('expected', 0):,} |",
        f"| dead letters read | {dead.get('dead_letters', 0):,} |",
        f"| missing / twice / unexpected / wrong reason | {dead.get('missing', '-')} / "
        f"{dead.get('twice', '-')} / {dead.get('unexpected', '-')} / "
        f"{dead.get('wrong_reason', '-')} |",
        f"| applied (events, items, feedback, users) | "
        f"{', '.join(str(report['oracle']['accepted'].get(t, 0)) for t in ('events', 'items', 'feedback', 'users'))} |",  # noqa: E501
        f"| users forgotten | {report.get('forgotten', '-')} |",
        f"| user states differing from the reference | "
        f"{report.get('state', {}).get('users_differing', '-')} of "
        f"{report.get('state', {}).get('users', '-')} |",
        f"| catalogue items held / expected | {report.get('catalogue', {}).get('held', '-')} / "
        f"{report.get('catalogue', {}).get('expected', '-')} |",
        f"| processing errors counted (followed topics) | {report.get('processing_errors', {})} |",
        f"| ERROR lines in the worker's log | {report['error_log_lines']:,} |",
        f"| peak RSS (first half, second half) | {rss['peak']:.0f} MB "
        f"({rss['first_half_peak']:.0f}, "
        f"{rss['second_half_peak']:.0f}) |",
        f"| time, records/s end to end | {report['seconds']:.0f} s, "
        f"{report['records_per_second']:,} |",
        "",
        "Worker settings: " + (", ".join(f"{k}={v}" for k, v in
                                         report.get("worker_settings", {}).items())
                               or "defaults") + ".",
        "",
        "Dead letters by reason: " + ", ".join(
            f"{reason} {count:,}" for reason, count in
            sorted(report["oracle"]["reasons"].items(), key=lambda kv: -kv[1])),
    ]
    refused = report["oracle"]["refused_by_the_broker"]
    if refused:
        lines += ["", f"Refused by the broker (never reached the worker): {sum(refused.values())}"
                  f" ({', '.join(f'{k} {v}' for k, v in sorted(refused.items()))})"]
    if report["failures"]:
        lines += ["", "Failures:", *(f"- {f}" for f in report["failures"])]
    return "\n".join(lines)


def plot(report: dict[str, Any], target: Path) -> bool:
    """The worker's RSS over the soak, and the dead letters by reason."""
    plt = pyplot()
    if plt is None:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    samples = report["rss_samples"]
    left.plot([t for t, _ in samples], [mb for _, mb in samples])
    left.axhline(report["rss_mb"]["limit"], color="red", linestyle="--", label="limit")
    left.set_xlabel("seconds")
    left.set_ylabel("worker RSS, MB")
    left.set_title(f"{report['records']:,} fuzzed records")
    left.legend()
    reasons = sorted(report["oracle"]["reasons"].items(), key=lambda kv: kv[1])
    right.barh([r for r, _ in reasons], [n for _, n in reasons])
    right.set_xlabel("dead letters (each checked at its source position)")
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return True
