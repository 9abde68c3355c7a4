"""State survives a killed worker (SIGKILL: no final commit, no flush), on Apache Kafka.

After the restart the worker re-reads whatever was not committed; the recovered duplicate
filter drops those redeliveries, so every user's count is exact, never doubled.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from app.broker.apache import KafkaBroker
from app.core.state import StateCodec, UserState
from tests.support.events import TS, views
from tests.support.kafka_io import produce, read_topic
from tests.support.worker import WorkerProcess, isolated_env

USERS = [f"user-{n}" for n in range(12)]


def _events(first: int, count: int) -> list[tuple[bytes | None, bytes | None]]:
    return views(USERS, first, count)


@pytest.mark.slow
@pytest.mark.parametrize("keep_local_state", [True, False], ids=["same-disk", "new-disk"])
def test_killed_worker_comes_back_with_exact_state(
    kafka: KafkaBroker, tmp_path: Path, keep_local_state: bool
) -> None:
    env = isolated_env(kafka.bootstrap, tmp_path / "data")
    topic = env["STREAMREC_TOPIC_EVENTS"]
    first = WorkerProcess(env, tmp_path / "worker1.log").start()
    try:
        first.wait_ready()
        asyncio.run(produce(kafka.bootstrap, topic, _events(0, 30)))
        first.wait_metric("streamrec_input_records_total", 30 * len(USERS), topic="events",
                          outcome="accepted")
    finally:
        first.kill()
    if not keep_local_state:
        shutil.rmtree(tmp_path / "data")  # a replacement machine: recover from the changelog

    second = WorkerProcess(env, tmp_path / "worker2.log").start()
    try:
        second.wait_ready()
        # redeliver the last 10 events of every user (an at-least-once producer retrying)
        # and send 10 new ones
        asyncio.run(produce(kafka.bootstrap, topic, _events(20, 10) + _events(30, 10)))
        second.wait_metric("streamrec_input_records_total", 10 * len(USERS), topic="events",
                           outcome="accepted")
        second.wait_metric("streamrec_input_records_total", 10 * len(USERS), topic="events",
                           outcome="duplicate")
    finally:
        second.stop()

    changelog = f"{env['STREAMREC_APP_ID']}-user-state-changelog"
    records = asyncio.run(read_topic(kafka.bootstrap, changelog, expect=len(USERS)))
    latest = {r.key: r.value for r in records}
    codec = StateCodec(UserState)
    for user in USERS:
        state = codec.decode(latest[user.encode()])
        assert state.counts == {"view": 40}, user
        assert state.last_ts == TS + 39
