"""Faults on Apache Kafka, each once a way to lose valid data: poison pills (a record that
crashed an agent, or every worker reading the catalogue), restarts under load (rolling or
killed: events were committed unprocessed), and records that arrive before a fresh worker
is ready (dead-lettered as processing errors)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from app.broker.apache import KafkaBroker, free_port
from app.contract.deadletter import read_headers
from app.contract.records import UserProfile
from app.contract.samples import good_view
from app.core.state import StateCodec, UserState, window_of
from tests.integration.test_recommendations import CATALOGUE, _items
from tests.support.events import TS
from tests.support.kafka_io import history_of, latest_by_key, produce, read_topic
from tests.support.worker import WorkerProcess, isolated_env

RESTART_CYCLES = int(os.environ.get("STREAMREC_TEST_RESTART_CYCLES", "2"))
"""Rounds of the restart test (each restarts both workers); `make test` runs 2, a longer
soak sets more (BENCHMARKS.md, "Reliability")."""
STALL_SECONDS = 60
"""How long the restart test waits with no new event in the changelog before it counts
what is missing as lost."""
ITEM_DELETE = b'{"v":1,"op":"delete","event_id":"e","item_id":"\\ufffd","ts":1700000000000}'


def _view(user: str, n: int) -> tuple[bytes | None, bytes | None]:
    return user.encode(), good_view(user, f"{user}-{n}", f"item-{n % 50}", TS + n)


@pytest.mark.slow
def test_poison_pills_hurt_nothing_but_themselves(kafka: KafkaBroker,
                                                  worker: WorkerProcess) -> None:
    env = worker.env
    users = [f"user-{n}" for n in range(20)]
    valid = [_view(u, n) for n in range(50) for u in users]    # 1,000 events
    deep = (b"u", b'{"x":' + b"[" * 1000 + b"]" * 1000 + b"}")
    huge = (b"user-3", b'{"v":1,' + b" " * 1_040_000 + b"}")   # over the producer's limit
    records = [*valid[:400], deep, *valid[400:700], huge, *valid[700:]]
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], records, batched=True))
    # the 70-byte item tombstone whose key decoded lossily to its item id
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], [(b"\xff", ITEM_DELETE)]))
    # and records no worker wrote, straight onto the compacted topic every worker follows
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_CATALOGUE"],
                        [(b"\xff", None), (b"x", b"\xc1 not msgpack")]))

    worker.wait_metric("streamrec_input_records_total", len(valid), topic="events",
                       outcome="accepted")
    dead = asyncio.run(read_topic(kafka.bootstrap, env["STREAMREC_TOPIC_DEADLETTER"], 3))
    reasons = sorted(read_headers(d.headers)["reason"] for d in dead)
    assert reasons == ["bad_key", "oversize", "too_deep"]
    cut = next(d for d in dead if read_headers(d.headers)["reason"] == "oversize")
    assert read_headers(cut.headers)["value_bytes"] == str(len(huge[1]))
    worker.wait_metric("streamrec_processing_errors_total", 2, topic="catalogue")
    assert worker.metric("streamrec_processing_errors_total", topic="events-batch") == 0
    assert worker._get("/ready")[0] == 200

    # and it starts again over the same catalogue topic (it used to exit 6 s into each start)
    worker.stop()
    worker.start().wait_ready()
    worker.wait_metric("streamrec_processing_errors_total", 2, topic="catalogue")


def _counted(worker: WorkerProcess, user: str) -> int | None:
    status, body = worker._get(f"/users/{user}")
    return json.loads(body)["counts"].get("view", 0) if status == 200 else None


class Stream:
    """Produces each user's events in order, ``rate`` events a second, in a thread, until
    stopped; counts what the broker acknowledged per user."""

    def __init__(self, bootstrap: str, topic: str, users: list[str], rate: float) -> None:
        self.bootstrap, self.topic, self.users, self.rate = bootstrap, topic, users, rate
        self.sent = dict.fromkeys(users, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.sent

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        shuffle = random.Random(7)
        try:
            step = 20 / self.rate
            while not self._stop.is_set():
                started = time.monotonic()
                chosen = shuffle.sample(self.users, 20)
                futures = []
                for user in chosen:
                    key, value = _view(user, self.sent[user])
                    futures.append(await producer.send(self.topic, value, key=key))
                    self.sent[user] += 1
                await asyncio.gather(*futures)
                await asyncio.sleep(max(0.0, step - (time.monotonic() - started)))
        finally:
            await producer.stop()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restarts_lose_nothing_and_apply_nothing_twice(
        kafka: KafkaBroker, tmp_path: Path, how: str) -> None:
    """Each of two workers restarted in turn, twice, under load: stopped with SIGTERM (a
    rolling restart), or killed with SIGKILL (no commit, no flush), the second time on an
    empty data directory (a replacement machine: its tables come back from the changelog).
    """
    env_a = isolated_env(kafka.bootstrap, tmp_path / "a", partitions=4)
    env_b = {**env_a, "STREAMREC_DATA_DIR": str(tmp_path / "b"),
             "STREAMREC_WEB_PORT": str(free_port())}
    workers = [WorkerProcess(env_a, tmp_path / "a.log").start(),
               WorkerProcess(env_b, tmp_path / "b.log").start()]
    users = [f"user-{n}" for n in range(200)]
    try:
        for worker in workers:
            worker.wait_ready()
        stream = Stream(kafka.bootstrap, env_a["STREAMREC_TOPIC_EVENTS"], users,
                        rate=1_500).start()
        try:
            for cycle in range(RESTART_CYCLES):
                for worker in workers:   # stopped or killed, then started again, in turn
                    time.sleep(3)
                    if how == "sigterm":
                        worker.stop()
                    else:
                        worker.kill()
                        if cycle % 2 == 1:   # every other kill on an empty disk
                            shutil.rmtree(worker.env["STREAMREC_DATA_DIR"])
                    worker.start().wait_ready(within=120)
                    print(f"cycle {cycle}: restarted {worker.log.name}")
            time.sleep(3)
        finally:
            sent = stream.stop()
        expected = sum(sent.values())
        changelog = f"{env_a['STREAMREC_APP_ID']}-user-state-changelog"
        codec = StateCodec(UserState)
        # wait while the workers still work off the backlog the restarts left: until every
        # event is in the changelog, or nothing more arrives there for STALL_SECONDS (a
        # fixed deadline judged a long soak's backlog as loss)
        best, moved = -1, time.monotonic()
        while True:
            latest = asyncio.run(latest_by_key(kafka.bootstrap, changelog))
            counts = {u: codec.decode(latest.get(u.encode())).counts.get("view", 0)
                      for u in users}
            applied = sum(counts.values())
            if applied > best:
                best, moved = applied, time.monotonic()
            if applied >= expected or time.monotonic() - moved > STALL_SECONDS:
                break
            time.sleep(2)
        lost = {u: sent[u] - counts[u] for u in users if counts[u] < sent[u]}
        doubled = {u: counts[u] - sent[u] for u in users if counts[u] > sent[u]}
        # Nothing lost, nothing applied twice. The last residual (1-9 events in some runs:
        # the first records of a partition with no commit yet, dropped across a seek and
        # never read again; a commit past an unprocessed record) is fixed (2026-12-04).
        if lost or doubled:
            wrong = [*list(lost)[:2], *list(doubled)[:2]]
            history = asyncio.run(history_of(kafka.bootstrap, changelog,
                                             {u.encode() for u in wrong}))
            trail = {u: [(p, o, codec.decode(v).counts.get("view", 0),
                          len(window_of(codec.decode(v).seen)))
                          for p, o, v in history[u.encode()]]
                     for u in wrong}
            pytest.fail(
                f"{sum(lost.values())} lost, {sum(doubled.values())} applied twice of "
                f"{expected}; lost {lost}, doubled {doubled}, sent "
                f"{ {u: sent[u] for u in wrong} }, API counts "
                f"{ {u: _counted(workers[0], u) for u in wrong} }, changelog trails "
                f"(partition, offset, views, ids remembered) {trail}")
    finally:
        for worker in workers:
            worker.stop()


def _profiles(users: list[str]) -> list[tuple[bytes | None, bytes | None]]:
    return [(u.encode(), msgspec.json.encode(UserProfile(
        v=1, event_id=f"p-{u}", user_id=u, ts=TS, age_band="25-34", occupation="writer")))
        for u in users]


@pytest.mark.slow
@pytest.mark.parametrize("app_id", range(3))
def test_what_arrives_before_a_fresh_worker_is_ready_is_all_accepted(
        kafka: KafkaBroker, tmp_path: Path, app_id: int) -> None:
    # a fresh app id: `streamrec topics`, producers already sending, then the first worker
    env = isolated_env(kafka.bootstrap, tmp_path / "data")
    subprocess.run([sys.executable, "-m", "app.cli", "topics"], env=env, check=True,
                   timeout=120, capture_output=True)
    users = [f"user-{n}" for n in range(300)]
    early_events = [_view(u, n) for n in range(3) for u in users]
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_USERS"], _profiles(users),
                        batched=True))
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items(), batched=True))
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], early_events,
                        batched=True))
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        # and while it starts, joins its group and recovers its (empty) tables
        late_events = [_view(u, n) for n in range(3, 6) for u in users]
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], late_events,
                            batched=True))
        worker.wait_ready()
        worker.wait_metric("streamrec_input_records_total", len(users), topic="users",
                           outcome="accepted")
        worker.wait_metric("streamrec_input_records_total", len(CATALOGUE), topic="items",
                           outcome="accepted")
        worker.wait_metric("streamrec_input_records_total", 6 * len(users), topic="events",
                           outcome="accepted")
        assert worker.metric("streamrec_deadletters_total") == 0
    finally:
        worker.stop()
