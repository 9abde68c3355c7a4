"""Exactly-once processing (STREAMREC_PROCESSING_GUARANTEE=exactly_once) on Apache Kafka:
a worker killed (SIGKILL) after it processed events but before its transaction committed
comes back, on the same disk or an empty one, and what a ``read_committed`` consumer sees is
as if the kill never happened: every user's state in the changelog holds each event once,
and every user's lists answer each batch once, the last one their newest event."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import msgspec
import pytest

from app.broker.apache import KafkaBroker
from app.core.state import StateCodec, UserState
from app.soak.crash import repeated_lists
from app.soak.fuzz import read_all
from tests.support.events import TS, views
from tests.support.kafka_io import latest_by_key, produce
from tests.support.worker import WorkerProcess, isolated_env

USERS = [f"user-{n}" for n in range(8)]


def _committed_view(bootstrap: str, env: dict[str, str]) -> tuple[dict[str, int], int,
                                                                   dict[bytes, int]]:
    """Each user's event count in the user-state changelog, the lists published twice and
    the newest event each user's lists answer, all as a read_committed consumer sees them."""
    changelog = asyncio.run(latest_by_key(
        bootstrap, f"{env['STREAMREC_APP_ID']}-user-state-changelog"))
    codec = StateCodec(UserState)
    counts = {u: codec.decode(changelog.get(u.encode())).counts.get("view", 0) for u in USERS}
    lists = [(r.key, int(msgspec.json.decode(r.value)["source_event_time"]))
             for r in asyncio.run(read_all(bootstrap, env["STREAMREC_TOPIC_RECOMMENDATIONS"]))
             if r.value is not None]
    twice, answered = repeated_lists(lists)
    return counts, twice, answered


@pytest.mark.slow
@pytest.mark.parametrize("keep_local_state", [True, False], ids=["same-disk", "new-disk"])
def test_a_kill_before_the_commit_is_invisible_to_read_committed_consumers(
        kafka: KafkaBroker, tmp_path: Path, keep_local_state: bool) -> None:
    env = isolated_env(kafka.bootstrap, tmp_path / "data")
    env.update({"STREAMREC_PROCESSING_GUARANTEE": "exactly_once",
                "STREAMREC_STANDBY_REPLICAS": "0",
                # a commit long after the events: the kill lands inside the transaction
                "STREAMREC_COMMIT_INTERVAL_SECONDS": "600"})
    topic = env["STREAMREC_TOPIC_EVENTS"]
    first = WorkerProcess(env, tmp_path / "worker1.log").start()
    try:
        first.wait_ready()
        asyncio.run(produce(kafka.bootstrap, topic, views(USERS, 0, 5)))
        first.wait_metric("streamrec_input_records_total", 5 * len(USERS), topic="events",
                          outcome="accepted")
        first.wait_metric("streamrec_recommendations_total", len(USERS))
        time.sleep(1.0)   # the changelog and list records reach the broker, uncommitted
    finally:
        first.kill()
    counts, _, answered = _committed_view(kafka.bootstrap, env)
    assert counts == dict.fromkeys(USERS, 0), counts   # nothing committed: nothing seen
    assert answered == {}
    if not keep_local_state:
        shutil.rmtree(tmp_path / "data")

    env["STREAMREC_COMMIT_INTERVAL_SECONDS"] = "1"
    second = WorkerProcess(env, tmp_path / "worker2.log").start()
    try:
        second.wait_ready()
        # the events of the aborted transaction are processed again and committed
        counts, twice, answered = _until(kafka.bootstrap, env, 5)
        report = _report(counts, twice, answered)
        assert counts == dict.fromkeys(USERS, 5), report
        assert answered == {u.encode(): TS + 4 for u in USERS}, report   # lists again too
        asyncio.run(produce(kafka.bootstrap, topic, views(USERS, 5, 1)))
        counts, twice, answered = _until(kafka.bootstrap, env, 6)
    finally:
        second.stop()
    report = _report(counts, twice, answered)
    assert counts == dict.fromkeys(USERS, 6), report        # each event once, none lost
    assert twice == 0, report
    assert answered == {u.encode(): TS + 5 for u in USERS}, report


def _until(bootstrap: str, env: dict[str, str], events: int, within: float = 60.0
           ) -> tuple[dict[str, int], int, dict[bytes, int]]:
    """The committed view once every user has ``events`` events in it (or at the end of
    ``within`` seconds)."""
    deadline = time.monotonic() + within
    while True:
        view = _committed_view(bootstrap, env)
        if all(c >= events for c in view[0].values()) or time.monotonic() > deadline:
            return view
        time.sleep(1.0)


def _report(counts: dict[str, int], twice: int, answered: dict[bytes, int]) -> str:
    return json.dumps({"counts": counts, "twice": twice,
                       "answered": {k.decode(): v - TS for k, v in answered.items()}})
