"""`streamrec soak crash`: faults at random moments under a known workload, then every
user's state compared with a reference.

Workers (one consumer group, 4 partitions) on their own Apache Kafka; a producer streams
each of ``users`` users' views in order at ``rate`` a second, counting what the broker
acknowledged per user (a send it does not acknowledge is sent again with the same event id,
as a producer with retries does: the worker's duplicate filter must make it one event).
Meanwhile, at random moments (seeded), a random worker is stopped with SIGTERM (a share
``graceful``) or killed with SIGKILL, every ``empty_every``-th kill on an empty data
directory (a replacement machine: its tables come back from the changelogs), and started
again; then the broker is killed and started ``broker_kills`` times; with ``add_worker`` a
further worker joins half way. Each fault's recovery is timed: from the fault to the victim
ready again, and to every sampled user of the victim's partitions answered by the API.

The verdict, once the producer stops and the workers have caught up: for every user, the
event count the API reports (``GET /users/{id}``) and the one in the compacted
``user-state`` changelog equal the events acknowledged: 0 lost, 0 applied twice. The
recommendations topic, read ``read_committed`` as a consumer would, is checked for lists
published twice (a user's list answering no event newer than an earlier one did): with
``processing_guarantee=exactly_once`` there must be none; at-least-once reports how many.
Every user's newest list must answer their newest event (what the user is shown now).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from app.broker.admin import ensure_topics, wait_until_ready
from app.broker.apache import KafkaBroker, free_port
from app.broker.embedded import die_with_parent, stop_process
from app.contract.partitioning import partition_of
from app.contract.samples import good_view
from app.core.state import StateCodec, UserState, seen_digest, window_of
from app.errors import EXIT_STUCK
from app.plots import pyplot
from app.settings import Settings
from app.soak.fuzz import read_all

Say = Callable[[str], None]
Progress = Callable[[str, int, int], None]
PARTITIONS = 4
TS = 1_700_000_000_000


class Member:
    """One `streamrec worker` process of the group: its own data dir and web port."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str) -> None:
        self.name = name
        self.env = {**env, "STREAMREC_DATA_DIR": str(workdir / name / "data"),
                    "STREAMREC_WEB_PORT": str(free_port())}
        self.log = workdir / name / "worker.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.supervised = True          # restarted when it exits on its own (not a fault)
        self.exits: list[int] = []      # exit codes of those exits

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['STREAMREC_WEB_PORT']}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"], env=self.env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.process, grace=30)

    def wipe(self) -> None:
        shutil.rmtree(self.env["STREAMREC_DATA_DIR"], ignore_errors=True)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read()
        except OSError:
            return 0, b""

    def ready(self) -> bool:
        return self.get("/ready")[0] == 200

    def restart_if_exited(self) -> bool:
        """As a supervisor (compose's restart policy, Kubernetes) does: a worker that ended
        on its own is started again; its exit code is kept for the report."""
        if not self.supervised or self.process is None or self.process.poll() is None:
            return False
        self.exits.append(self.process.returncode)
        self.start()
        return True


async def supervise(members: list[Member], say: Say) -> None:
    while True:
        for member in members:
            if member.restart_if_exited():
                say(f"{member.name} exited on its own ({member.exits[-1]}): restarted")
        await asyncio.sleep(1.0)


class Producer:
    """Each user's views in order, ``rate`` a second; ``sent`` counts the distinct events
    the broker acknowledged per user; an unacknowledged send is repeated (same event id)."""

    def __init__(self, bootstrap: str, topic: str, users: list[str], rate: float,
                 seed: int = 0) -> None:
        self.bootstrap, self.topic, self.users, self.rate = bootstrap, topic, users, rate
        self.sent = dict.fromkeys(users, 0)
        self.offsets: dict[str, list[int]] = {user: [] for user in users}   # per event, in order
        self.repeated = 0
        self._stop = asyncio.Event()
        self._rng = random.Random(seed)  # noqa: S311 - a workload, not a secret

    def stop(self) -> None:
        self._stop.set()

    async def _send(self, producer: AIOKafkaProducer, user: str) -> None:
        n = self.sent[user]
        value = good_view(user, f"{user}-{n}", f"item-{n % 50}", TS + n)
        while True:
            try:
                done = await (await producer.send(self.topic, value, key=user.encode()))
                self.sent[user] += 1
                self.offsets[user].append(done.offset)
                return
            except KafkaError:
                self.repeated += 1
                await asyncio.sleep(0.5)

    async def run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5,
                                    request_timeout_ms=5_000, retry_backoff_ms=200)
        await producer.start()
        try:
            step = 20 / self.rate
            while not self._stop.is_set():
                started = time.monotonic()
                await asyncio.gather(*(self._send(producer, user)
                                       for user in self._rng.sample(self.users, 20)))
                await asyncio.sleep(max(0.0, step - (time.monotonic() - started)))
        finally:
            await producer.stop()


@dataclass
class Fault:
    kind: str            # sigterm, sigkill, sigkill-empty, broker, join
    victim: str
    at: float            # seconds since the soak started
    ready_seconds: float = -1.0      # fault to the victim ready again (-1: never)
    served_seconds: float = -1.0     # fault to every sampled user of the victim answered


@dataclass
class Plan:
    workers: int = 2
    users: int = 200
    rate: float = 1_000.0
    kills: int = 20
    graceful: float = 0.3
    empty_every: int = 2
    broker_kills: int = 3
    add_worker: bool = True
    gap: tuple[float, float] = (3.0, 10.0)
    seed: int = 0
    worker_settings: dict[str, str] = field(default_factory=dict)   # e.g. standby_replicas
    faults: list[Fault] = field(default_factory=list)

    @property
    def exactly_once(self) -> bool:
        return self.worker_settings.get("processing_guarantee") == "exactly_once"


async def _until(check: Callable[[], bool], within: float, poll: float = 0.25) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await asyncio.to_thread(check):
            return time.monotonic() - started
        await asyncio.sleep(poll)
    return -1.0


def _up(member: Member) -> Callable[[], bool]:
    return lambda: member.get("/health")[0] == 200


def _serves(member: Member, users: list[str]) -> Callable[[], bool]:
    """Whether ``member`` answers for every one of ``users`` (forwarding to owners)."""
    return lambda: all(_known_counts([member], u) is not None for u in users)


def _known_counts(members: list[Member], user: str) -> int | None:
    for member in members:
        if member.alive():
            status, body = member.get(f"/users/{user}")
            if status == 200:
                return int(json.loads(body)["counts"].get("view", 0))
            if status == 404:
                return 0
    return None


def repeated_lists(lists: list[tuple[bytes, int]]) -> tuple[int, dict[bytes, int]]:
    """Of ``lists`` (each a user's key and its source event's time, in topic order), how
    many answer no event newer than an earlier list of the same user did (a batch's lists
    published again after a fault: its events processed twice); and the newest event time
    each user's lists answer. A user's lists are on one partition, in order, and each
    user's events have increasing times."""
    answered: dict[bytes, int] = {}
    twice = 0
    for key, source in lists:
        twice += source <= answered.get(key, -1)
        answered[key] = max(source, answered.get(key, -1))
    return twice, answered


async def _published(settings: Settings) -> list[tuple[bytes, int]]:
    """The committed lists of the recommendations topic: (user key, source event time)."""
    return [(record.key, int(msgspec.json.decode(record.value)["source_event_time"]))
            for record in await read_all(settings.bootstrap_servers(),
                                         settings.topic_recommendations)
            if record.value is not None]   # None: a forgotten user's tombstone


async def changelog_states(settings: Settings, users: list[str]) -> dict[str, UserState]:
    latest = {r.key: r.value for r in await read_all(
        settings.bootstrap_servers(), f"{settings.app_id}-user-state-changelog")}
    codec = StateCodec(UserState)
    return {u: codec.decode(latest.get(u.encode())) for u in users}


async def changelog_counts(settings: Settings, users: list[str]) -> dict[str, int]:
    return {u: state.counts.get("view", 0)
            for u, state in (await changelog_states(settings, users)).items()}


def missing_in_window(user: str, state: UserState, offsets: list[int]) -> dict[str, Any]:
    """Which of ``user``'s events (``{user}-{n}``, n from 0) the state's id window lacks,
    from the oldest it holds to the newest sent: their numbers and input offsets, and the
    input position the state was applied up to. What a lost-events failure needs to tell a
    skipped range of a partition from scattered drops."""
    window = set(window_of(state.seen))
    sent = len(offsets)
    digests = [seen_digest(f"{user}-{n}") for n in range(sent)]
    first = next((n for n in range(sent) if digests[n] in window), sent)   # oldest it holds
    missing = [n for n in range(first, sent) if digests[n] not in window]
    return {"window_from": first, "missing": missing[:50],
            "offsets": [offsets[n] for n in missing[:50]],
            "read_to": list(state.read_to)}


async def run(plan: Plan, say: Say, progress: Progress,
              workdir: Path | None = None) -> dict[str, Any]:
    """The soak (module docstring)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="streamrec-crash-"))
    rng = random.Random(plan.seed)  # noqa: S311 - fault timing, not a secret
    say("starting Apache Kafka (KRaft) from the Maven Central jars")
    broker = KafkaBroker(workdir / "kafka")
    await asyncio.to_thread(broker.start)
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({"STREAMREC_BROKER_URL": broker.bootstrap, "STREAMREC_APP_ID": f"crash-{tag}",
                "STREAMREC_PARTITIONS": str(PARTITIONS), "STREAMREC_LOG_LEVEL": "info",
                "STREAMREC_SESSION_TIMEOUT_SECONDS": "10",
                **{f"STREAMREC_TOPIC_{t.upper()}": f"{t}-{tag}"
                   for t in Settings.topic_names()},
                **{f"STREAMREC_{name.upper()}": value
                   for name, value in plan.worker_settings.items()}})
    settings = Settings.model_validate({k.removeprefix("STREAMREC_").lower(): v
                                        for k, v in env.items() if k.startswith("STREAMREC_")})
    members = [Member(env, workdir, f"w{n}") for n in range(plan.workers)]
    users = [f"user-{n}" for n in range(plan.users)]
    by_partition: dict[int, list[str]] = {}
    for user in users:
        by_partition.setdefault(partition_of(user.encode(), PARTITIONS), []).append(user)
    sample = [u for part in by_partition.values() for u in part[:3]]   # every partition
    started = time.monotonic()
    producer: Producer | None = None
    streaming: asyncio.Task[None] | None = None
    supervising: asyncio.Task[None] | None = None
    try:
        await wait_until_ready(settings)
        await ensure_topics(settings)
        for member in members:
            member.start()
        for member in members:
            if await _until(member.ready, 180) < 0:
                raise RuntimeError(f"{member.name} not ready; see {member.log}")
        producer = Producer(broker.bootstrap, settings.topic_events, users, plan.rate,
                            plan.seed)
        streaming = asyncio.create_task(producer.run())
        supervising = asyncio.create_task(supervise(members, say))
        total = plan.kills + plan.broker_kills + int(plan.add_worker)
        joined = False
        for n in range(plan.kills):
            await asyncio.sleep(rng.uniform(*plan.gap))
            if plan.add_worker and not joined and n >= plan.kills // 2:
                joined = True   # a worker joins half way (a rebalance), then the faults go on
                newcomer = Member(env, workdir, f"w{len(members)}")
                members.append(newcomer)
                fault = Fault("join", newcomer.name, time.monotonic() - started)
                t0 = time.monotonic()
                newcomer.start()
                # up: serving HTTP (it answers for any user by forwarding); whether the group
                # gives it partitions is reported at the end (/ready needs some)
                fault.ready_seconds = await _until(_up(newcomer), 180)
                served = await _until(_serves(newcomer, sample), 180)
                fault.served_seconds = -1.0 if served < 0 else time.monotonic() - t0
                plan.faults.append(fault)
                progress("faults", len(plan.faults), total)
                say(f"join {newcomer.name}: ready after {fault.ready_seconds:.1f} s")
                await asyncio.sleep(rng.uniform(*plan.gap))
            victim = rng.choice(members)
            graceful = rng.random() < plan.graceful
            kills = sum(f.kind.startswith("sigkill") for f in plan.faults)
            empty = not graceful and kills % plan.empty_every == plan.empty_every - 1
            kind = "sigterm" if graceful else ("sigkill-empty" if empty else "sigkill")
            fault = Fault(kind, victim.name, time.monotonic() - started)
            t0 = time.monotonic()
            victim.supervised = False
            if graceful:
                await asyncio.to_thread(victim.stop)
            else:
                victim.kill()
                if empty:
                    victim.wipe()
            victim.start()
            victim.supervised = True
            fault.ready_seconds = await _until(victim.ready, 240)
            served = await _until(lambda: all(_known_counts(members, u) is not None
                                              for u in sample), 240)
            fault.served_seconds = -1.0 if served < 0 else time.monotonic() - t0
            plan.faults.append(fault)
            progress("faults", len(plan.faults), total)
            say(f"{kind} {victim.name}: ready after {fault.ready_seconds:.1f} s")
        for _ in range(plan.broker_kills):
            await asyncio.sleep(rng.uniform(*plan.gap))
            fault = Fault("broker", "kafka", time.monotonic() - started)
            broker.kill()
            await asyncio.sleep(4.0)
            broker.start()
            fault.ready_seconds = await _until(lambda: all(m.ready() for m in members), 240)
            plan.faults.append(fault)
            progress("faults", len(plan.faults), total)
            say(f"broker killed: every worker ready {fault.ready_seconds:.1f} s after restart")
        await asyncio.sleep(5.0)
        producer.stop()
        await streaming
        return await _verdict(plan, settings, members, users, producer, say, progress,
                              time.monotonic() - started)
    finally:
        if producer is not None:
            producer.stop()
        if streaming is not None and not streaming.done():
            streaming.cancel()
        if supervising is not None:
            supervising.cancel()
        for member in members:
            member.supervised = False
        for member in members:
            member.stop()
        await asyncio.to_thread(broker.stop)


async def applied_counts(settings: Settings, sent: dict[str, int], progress: Progress,
                         phase: str, alive: Callable[[], bool] = lambda: True
                         ) -> dict[str, int]:
    """Every user's event count in the compacted ``user-state`` changelog, once each user
    has the events ``sent`` for them, or once nothing has moved for a minute (or ``alive``
    turned false); ``progress(phase, ...)`` is told at each look, every 2 s."""
    users = list(sent)
    expected = sum(sent.values())
    best, moved = -1, time.monotonic()
    counts: dict[str, int] = {}
    while alive():
        counts = await changelog_counts(settings, users)
        # per user: one user's events applied twice must not stand in for another's missing
        applied = sum(min(counts[u], sent[u]) for u in users)
        progress(phase, applied, expected)
        if applied > best:
            best, moved = applied, time.monotonic()
        if applied >= expected or time.monotonic() - moved > 60:
            break
        await asyncio.sleep(2.0)
    return counts


async def _verdict(plan: Plan, settings: Settings, members: list[Member], users: list[str],
                   producer: Producer, say: Say, progress: Progress,
                   seconds: float) -> dict[str, Any]:
    sent = producer.sent
    expected = sum(sent.values())
    say(f"{expected:,} events acknowledged; waiting for the workers to catch up")
    counts = await applied_counts(settings, sent, progress, "caught up")

    api = {u: await asyncio.to_thread(_known_counts, members, u) for u in users}
    lists = await _published(settings)
    lists_twice, answered = repeated_lists(lists)
    # a user's newest list must answer their newest event: what the user is shown now
    stale = [u for u in users if sent[u] and answered.get(u.encode(), -1) < TS + sent[u] - 1]
    lost = {u: sent[u] - counts[u] for u in users if counts[u] < sent[u]}
    lost_in_window: dict[str, Any] = {}
    if lost:
        states = await changelog_states(settings, list(lost)[:5])
        lost_in_window = {u: missing_in_window(u, state, producer.offsets[u])
                          for u, state in states.items()}
    doubled = {u: counts[u] - sent[u] for u in users if counts[u] > sent[u]}
    api_wrong = {u: (api[u], sent[u]) for u in users if api[u] != sent[u]}
    faults = plan.faults
    worker_faults = [f for f in faults if f.kind.startswith("sig")]

    def seconds_of(kinds: tuple[str, ...], what: str) -> dict[str, float]:
        values = [getattr(f, what) for f in faults if f.kind in kinds and getattr(f, what) >= 0]
        if not values:
            return {}
        return {"median": round(statistics.median(values), 1), "max": round(max(values), 1),
                "n": len(values)}

    report = {
        "workers": plan.workers, "users": plan.users, "rate": plan.rate, "seed": plan.seed,
        "worker_settings": plan.worker_settings,
        "seconds": round(seconds, 1), "events": expected, "repeated_sends": producer.repeated,
        "faults": [f.__dict__ for f in faults],
        "worker_faults": len(worker_faults),
        "never_ready": sum(f.ready_seconds < 0 for f in faults),
        # partitions are what /ready wants: a worker the group gives none is up but not ready
        "ready_at_end": {m.name: m.ready() for m in members},
        # exits that were not faults: the workers' own (a stuck transaction under
        # exactly-once: 75), each restarted as a supervisor would
        "own_exits": {m.name: m.exits for m in members if m.exits},
        "lost": sum(lost.values()), "applied_twice": sum(doubled.values()),
        "api_differing": len(api_wrong),
        "lists": len(lists), "lists_twice": lists_twice, "stale_lists": len(stale),
        "examples": {"lost": dict(list(lost.items())[:5]),
                     "lost_in_window": lost_in_window,
                     "doubled": dict(list(doubled.items())[:5]),
                     "api": dict(list(api_wrong.items())[:5])},
        "recovery": {
            kind: {"ready": seconds_of(kinds, "ready_seconds"),
                   "served": seconds_of(kinds, "served_seconds")}
            for kind, kinds in (("sigterm", ("sigterm",)), ("sigkill", ("sigkill",)),
                                ("sigkill-empty", ("sigkill-empty",)),
                                ("broker", ("broker",)), ("join", ("join",)))},
    }
    # a worker may end itself only to have a stuck transaction redone (EXIT_STUCK)
    crashed = [c for m in members for c in m.exits if c != EXIT_STUCK]
    report["passed"] = (not lost and not doubled and not api_wrong
                        and report["never_ready"] == 0 and not crashed
                        and not stale and not (plan.exactly_once and lists_twice))
    return report


def markdown(report: dict[str, Any]) -> str:
    kinds: dict[str, int] = {}
    for fault in report["faults"]:
        kinds[fault["kind"]] = kinds.get(fault["kind"], 0) + 1
    lines = [
        f"`streamrec soak crash` ({report['workers']} workers, {report['users']} users, "
        f"{report['rate']:.0f} events/s, seed {report['seed']}"
        + "".join(f", {k}={v}" for k, v in report.get("worker_settings", {}).items())
        + "): "
        f"{'PASSED' if report['passed'] else 'FAILED'}",
        "",
        f"Faults: {', '.join(f'{n} {k}' for k, n in kinds.items())}; "
        f"{report['events']:,} events acknowledged ({report['repeated_sends']:,} sends "
        f"repeated) in {report['seconds']:.0f} s.",
        "",
        "| verdict | |",
        "| --- | ---: |",
        f"| events lost (changelog) | {report['lost']} |",
        f"| events applied twice (changelog) | {report['applied_twice']} |",
        f"| users whose API count differs | {report['api_differing']} |",
        f"| lists published twice (of {report['lists']:,}; read_committed) | "
        f"{report['lists_twice']} |",
        f"| users whose newest list does not answer their newest event | "
        f"{report['stale_lists']} |",
        f"| faults never recovered from | {report['never_ready']} |",
        f"| workers that exited on their own (restarted) | "
        f"{sum(len(c) for c in report['own_exits'].values())} |",
        f"| workers holding partitions at the end (ready) | "
        f"{sum(report['ready_at_end'].values())} of {len(report['ready_at_end'])} |",
        "",
        "| fault | to ready: median / max s (n) | to the victim's users served: median / max s |",
        "| --- | --- | --- |",
    ]
    for kind, figures in report["recovery"].items():
        ready, served = figures["ready"], figures["served"]
        if not ready:
            continue
        lines.append(f"| {kind} | {ready['median']} / {ready['max']} ({ready['n']}) | "
                     + (f"{served['median']} / {served['max']}" if served else "-") + " |")
    return "\n".join(lines)


def plot(report: dict[str, Any], target: Path) -> bool:
    """Each fault's recovery: seconds to ready, by kind, in order."""
    plt = pyplot()
    if plt is None:
        return False
    colours = {"sigterm": "tab:blue", "sigkill": "tab:orange", "sigkill-empty": "tab:red",
               "broker": "tab:purple", "join": "tab:green"}
    figure, axis = plt.subplots(figsize=(10, 4))
    for n, fault in enumerate(report["faults"]):
        axis.bar(n, max(fault["ready_seconds"], 0), color=colours.get(fault["kind"], "grey"),
                 label=fault["kind"])
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    axis.legend(unique.values(), unique.keys())
    axis.set_xlabel("fault, in order")
    axis.set_ylabel("seconds to ready again")
    axis.set_title(f"{len(report['faults'])} faults: {report['lost']} events lost, "
                   f"{report['applied_twice']} applied twice")
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return True
