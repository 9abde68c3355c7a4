"""A worker through a broker outage (its own Apache Kafka, killed and started again): /ready
answers 503 while the cluster does not answer and 200 again once it does, /health stays 200,
the outage is logged a few times (not per retry), and events sent after it are applied."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from app.broker.apache import KafkaBroker
from tests.support.events import views
from tests.support.kafka_io import produce
from tests.support.worker import WorkerProcess, isolated_env


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
