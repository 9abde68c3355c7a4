"""The embedded default (Tansu, memory-only, no JVM) and StreamRec's handling of its gaps:
table recovery despite its ListOffsets answer, and local state reset when it restarts."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.broker.apache import free_port
from app.broker.embedded import EmbeddedBroker
from tests.support.events import views
from tests.support.kafka_io import produce
from tests.support.worker import WorkerProcess, isolated_env

USERS = [f"user-{n}" for n in range(8)]


def _events(first: int, count: int) -> list[tuple[bytes | None, bytes | None]]:
    return views(USERS, first, count)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(free_port(), tmp_path / "embedded")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _env(broker: EmbeddedBroker, data: Path) -> dict[str, str]:
    env = isolated_env(None, data)  # no broker URL: embedded mode
    env["STREAMREC_EMBEDDED_PORT"] = str(broker.port)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("keep_local_state", [True, False], ids=["same-disk", "new-disk"])
def test_state_recovers_from_the_embedded_changelog(
    embedded: EmbeddedBroker, tmp_path: Path, keep_local_state: bool
) -> None:
    """Tansu answers ListOffsets(latest) with the last batch's base offset + 1: with
    multi-record changelog batches Faust would stop recovery early (losing state) or find
    its local offset past the "end". Batched input makes multi-record batches likely."""
    env = _env(embedded, tmp_path / "data")
    topic = env["STREAMREC_TOPIC_EVENTS"]
    first = WorkerProcess(env, tmp_path / "worker1.log").start()
    try:
        first.wait_ready()
        asyncio.run(produce(embedded.bootstrap, topic, _events(0, 25), batched=True))
        first.wait_metric("streamrec_input_records_total", 25 * len(USERS), topic="events",
                          outcome="accepted")
    finally:
        first.stop()
    if not keep_local_state:
        shutil.rmtree(tmp_path / "data" / "faust")  # force recovery from the changelog

    second = WorkerProcess(env, tmp_path / "worker2.log").start()
    try:
        second.wait_ready()
        # every old event again, plus 5 new per user: all old ones must be known
        asyncio.run(produce(embedded.bootstrap, topic, _events(0, 30), batched=True))
        second.wait_metric("streamrec_input_records_total", 5 * len(USERS), topic="events",
                           outcome="accepted")
        second.wait_metric("streamrec_input_records_total", 25 * len(USERS), topic="events",
                           outcome="duplicate")
        assert second.metric("streamrec_input_records_total", topic="events",
                             outcome="accepted") == 5 * len(USERS)
    finally:
        second.stop()


@pytest.mark.slow
def test_local_state_is_reset_when_the_embedded_broker_restarts(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    for round_ in range(2):
        broker = EmbeddedBroker(port, tmp_path / f"embedded-{round_}")
        broker.start()
        env = _env(broker, data)
        env["STREAMREC_APP_ID"] = "test-reset"  # the same worker identity both times
        worker = WorkerProcess(env, tmp_path / f"worker{round_}.log").start()
        try:
            worker.wait_ready()
            asyncio.run(produce(broker.bootstrap, env["STREAMREC_TOPIC_EVENTS"], _events(0, 5)))
            # the second broker is empty: the same events are new again, not duplicates
            worker.wait_metric("streamrec_input_records_total", 5 * len(USERS),
                               topic="events", outcome="accepted")
            assert worker.metric("streamrec_input_records_total", topic="events",
                                 outcome="duplicate") == 0
        finally:
            worker.stop()
            broker.stop()
        assert (data / "cluster-id").read_text().strip() == broker.cluster_id
    assert "local tables were built against another cluster" in (
        tmp_path / "worker1.log"
    ).read_text()
