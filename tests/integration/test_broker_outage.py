"""A worker through a broker outage (its own Apache Kafka, killed and started again): /ready
answers 503 while the cluster does not answer and 200 again once it does, /health stays 200,
the outage is logged a few times (not per retry), and events sent after it are applied."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from app.broker.apache import KafkaBroker
from app.core.state import StateCodec, UserState
from tests.support.events import views
from tests.support.kafka_io import latest_by_key, produce
from tests.support.worker import WorkerProcess, isolated_env

BROKER_KILLS = 3


def _status(worker: WorkerProcess, path: str) -> int:
    try:
        return worker._get(path)[0]
    except OSError:
        return 0


def _until(worker: WorkerProcess, path: str, status: int, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if _status(worker, path) == status:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{path} did not answer {status} within {within} s: "
                         f"{worker.log.read_text(errors='replace')[-3000:]}")


@pytest.mark.slow
def test_ready_follows_the_broker_through_an_outage(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka")     # its own broker: this test kills it
    broker.start()
    env = isolated_env(broker.bootstrap, tmp_path / "w")
    worker = WorkerProcess(env, tmp_path / "w.log").start()
    try:
        worker.wait_ready()
        asyncio.run(produce(broker.bootstrap, env["STREAMREC_TOPIC_EVENTS"],
                            views(["before"], 0, 3)))
        worker.wait_metric("streamrec_input_records_total", 3, topic="events",
                           outcome="accepted")
        broker.kill()
        down = _until(worker, "/ready", 503, within=30)
        print(f"/ready 503 {down:.1f} s after the broker was killed")
        assert _status(worker, "/health") == 200
        assert worker.metric("streamrec_broker_reachable") == 0
        time.sleep(10)                           # an outage of a while: still alive, not ready
        assert _status(worker, "/ready") == 503
        assert worker.process is not None
        assert worker.process.poll() is None
        broker.start()
        up = _until(worker, "/ready", 200, within=120)
        print(f"/ready 200 {up:.1f} s after the broker was started again")
        assert worker.metric("streamrec_broker_reachable") == 1
        asyncio.run(produce(broker.bootstrap, env["STREAMREC_TOPIC_EVENTS"],
                            views(["after"], 0, 3)))
        worker.wait_metric("streamrec_input_records_total", 6, topic="events",
                           outcome="accepted", within=120)
        log = worker.log.read_text(errors="replace")
        assert log.count("broker held up by") == 1
        assert log.count("broker going again") == 1
    finally:
        worker.stop()
        broker.stop()


class Resending:
    """Each user's views in order, ``rate`` a second, in a thread; a send the broker does
    not acknowledge (it is down) is sent again, same event id, until it is: what a
    producer with retries does. ``sent`` counts distinct events acknowledged per user."""

    def __init__(self, bootstrap: str, topic: str, users: list[str], rate: float) -> None:
        self.bootstrap, self.topic, self.users, self.rate = bootstrap, topic, users, rate
        self.sent = dict.fromkeys(users, 0)
        self.resent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Resending:
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(timeout=180)
        assert not self._thread.is_alive()
        return self.sent

    async def _send(self, producer: AIOKafkaProducer, user: str) -> None:
        key, value = views([user], self.sent[user], 1)[0]
        while True:
            try:
                await (await producer.send(self.topic, value, key=key))
                self.sent[user] += 1
                return
            except KafkaError:
                self.resent += 1
                await asyncio.sleep(0.5)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5,
                                    request_timeout_ms=5_000, retry_backoff_ms=200)
        await producer.start()
        shuffle = random.Random(11)
        try:
            step = 20 / self.rate
            while not self._stop.is_set():
                started = time.monotonic()
                await asyncio.gather(*(self._send(producer, user)
                                       for user in shuffle.sample(self.users, 20)))
                await asyncio.sleep(max(0.0, step - (time.monotonic() - started)))
        finally:
            await producer.stop()


@pytest.mark.slow
def test_broker_kills_under_load_lose_nothing_and_apply_nothing_twice(tmp_path: Path) -> None:
    """The broker killed (SIGKILL) and started again three times while a producer streams
    500 views a second for 200 users to a worker: every user's state in the compacted
    changelog equals what the broker acknowledged (a resent event is one event: its id)."""
    broker = KafkaBroker(tmp_path / "kafka")
    broker.start()
    env = isolated_env(broker.bootstrap, tmp_path / "w")
    worker = WorkerProcess(env, tmp_path / "w.log").start()
    users = [f"user-{n}" for n in range(200)]
    try:
        worker.wait_ready()
        stream = Resending(broker.bootstrap, env["STREAMREC_TOPIC_EVENTS"], users,
                           rate=500).start()
        try:
            for kill in range(BROKER_KILLS):
                time.sleep(8)
                broker.kill()
                time.sleep(4)
                broker.start()
                down = _until(worker, "/ready", 200, within=180)
                print(f"broker kill {kill + 1}: worker ready {down:.1f} s after the restart")
            time.sleep(5)
        finally:
            sent = stream.stop()
        expected = sum(sent.values())
        changelog = f"{env['STREAMREC_APP_ID']}-user-state-changelog"
        codec = StateCodec(UserState)
        best, moved, counts = -1, time.monotonic(), dict.fromkeys(users, 0)
        while True:
            latest = asyncio.run(latest_by_key(broker.bootstrap, changelog))
            counts = {u: codec.decode(latest.get(u.encode())).counts.get("view", 0)
                      for u in users}
            applied = sum(counts.values())
            if applied > best:
                best, moved = applied, time.monotonic()
            if applied >= expected or time.monotonic() - moved > 60:
                break
            time.sleep(2)
        lost = {u: sent[u] - counts[u] for u in users if counts[u] < sent[u]}
        doubled = {u: counts[u] - sent[u] for u in users if counts[u] > sent[u]}
        print(f"{expected} events acknowledged ({stream.resent} sends repeated), "
              f"{sum(lost.values())} lost, {sum(doubled.values())} applied twice")
        assert not lost, lost
        assert not doubled, doubled
        assert worker.process is not None
        assert worker.process.poll() is None
    finally:
        worker.stop()
        broker.stop()
