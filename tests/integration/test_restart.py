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
from tests.support.kafka_io import history_of, latest_by_key, produce, read_topic
from tests.support.worker import WorkerProcess, isolated_env

USERS = [f"user-{n}" for n in range(12)]


def _events(first: int, count: int) -> list[tuple[bytes | None, bytes | None]]:
    return views(USERS, first, count)


def _every_user_has_exactly(latest: dict[bytes | None, bytes | None], views_each: int
                            ) -> None:
    """Every user's state on the changelog (``latest``: key -> value) counts exactly
    ``views_each`` views, the last at TS + views_each - 1."""
    codec = StateCodec(UserState)
    for user in USERS:
        value = latest[user.encode()]
        assert value is not None, user
        state = codec.decode(value)
        assert state.counts == {"view": views_each}, user
        assert state.last_ts == TS + views_each - 1


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
    _every_user_has_exactly({r.key: r.value for r in records}, 40)


@pytest.mark.slow
def test_writes_held_until_the_commit_reach_the_changelog_once_and_survive_a_kill(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    """Ten events a user, each sent and processed on its own within one commit interval:
    the worker holds their state writes (STREAMREC_CHANGELOG_BUFFER_MB) and sends none of
    them before its commit; killed before it, a replacement on a
    new disk recovers the older changelog, reads the uncommitted events again, and every
    user's state is exact."""
    env = {**isolated_env(kafka.bootstrap, tmp_path / "data"),
           "STREAMREC_COMMIT_INTERVAL_SECONDS": "30"}
    topic = env["STREAMREC_TOPIC_EVENTS"]
    changelog = f"{env['STREAMREC_APP_ID']}-user-state-changelog"
    first = WorkerProcess(env, tmp_path / "worker1.log").start()
    try:
        first.wait_ready()
        for n in range(10):   # each round its own batch
            asyncio.run(produce(kafka.bootstrap, topic, _events(n, 1)))
            first.wait_metric("streamrec_input_records_total", (n + 1) * len(USERS),
                              topic="events", outcome="accepted")
        replaced = first.metric("streamrec_changelog_replaced_total", to="user-state")
    finally:
        first.kill()
    written = asyncio.run(history_of(kafka.bootstrap, changelog,
                                     {u.encode() for u in USERS}))
    assert replaced >= 5 * len(USERS)
    # at most one record a user (had a commit fallen among the rounds), against ten writes
    assert sum(len(records) for records in written.values()) <= len(USERS), written

    shutil.rmtree(tmp_path / "data")   # a replacement machine: recover from the changelog
    second = WorkerProcess(env, tmp_path / "worker2.log").start()
    try:
        second.wait_ready()
        second.wait_metric("streamrec_input_records_total", 10 * len(USERS), topic="events",
                           outcome="accepted")
    finally:
        second.stop()   # a clean stop commits: the held writes are sent first
    _every_user_has_exactly(asyncio.run(latest_by_key(kafka.bootstrap, changelog)), 10)
