"""Forgetting a user on request, on Apache Kafka: a tombstone on ``users`` keyed by the
user's id deletes the user from every table and its changelog, drops their cached lists and
tells consumers of ``recommendations`` to drop theirs, within a second, while other users'
events keep flowing; a worker rebuilt from the changelogs alone never sees them again."""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time

import pytest

from app.broker.admin import changelog_topic
from app.broker.apache import KafkaBroker
from tests.integration.test_faults import Stream, _profiles, _view
from tests.integration.test_recommendations import _items
from tests.support.kafka_io import committed_offsets, latest_by_key, produce
from tests.support.worker import WorkerProcess

FORGET_WITHIN_SECONDS = 1.0
USER_TABLES = ("user-state", "feedback-state", "profile-state")


def _held(worker: WorkerProcess, user: str) -> dict[str, bool] | None:
    """What the API says the worker holds for ``user`` (None: nothing, a 404)."""
    status, body = worker._get(f"/users/{user}")
    if status == 404:
        return None
    assert status == 200, body
    view = json.loads(body)
    return {"events": bool(view["counts"]), "profile": view["profile"],
            "feedback_state": view["feedback_state"]}


@pytest.mark.slow
def test_a_tombstone_on_users_forgets_the_user_everywhere_within_a_second(
        kafka: KafkaBroker, worker: WorkerProcess) -> None:
    env = worker.env
    gone = [f"gone-{n}" for n in range(10)]
    kept = [f"kept-{n}" for n in range(40)]
    users = gone + kept
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items(), batched=True))
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_USERS"], _profiles(users),
                        batched=True))
    positions = asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"],
                                    [_view(u, n) for n in range(5) for u in users],
                                    batched=True))
    worker.wait_metric("streamrec_input_records_total", 5 * len(users), topic="events",
                       outcome="accepted")
    worker.wait_metric("streamrec_recommendations_total", 1)
    everything = {"events": True, "profile": True, "feedback_state": True}
    deadline = time.monotonic() + 30
    while any(_held(worker, u) != everything for u in gone) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [_held(worker, u) for u in gone] == [everything] * len(gone)

    # the other users' events keep coming while each of the ten is forgotten in turn
    stream = Stream(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], kept, rate=500).start()
    seconds: list[float] = []
    try:
        time.sleep(1)
        for user in gone[1:]:
            started = time.monotonic()
            asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_USERS"],
                                [(user.encode(), None)]))
            while _held(worker, user) is not None and time.monotonic() - started < 10:
                time.sleep(0.01)
            seconds.append(time.monotonic() - started)
    finally:
        sent = stream.stop()
    # and as the docs tell an operator to, with the command
    subprocess.run([sys.executable, "-m", "app.cli", "forget", gone[0]], env=env, check=True,
                   timeout=60, capture_output=True)
    deadline = time.monotonic() + 10
    while _held(worker, gone[0]) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _held(worker, gone[0]) is None
    print(f"forgotten in p50 {statistics.median(seconds) * 1000:.0f} ms, "
          f"max {max(seconds) * 1000:.0f} ms (from starting a producer for the tombstone, "
          f"while {sum(sent.values())} events of other users flowed)")
    assert max(seconds) < FORGET_WITHIN_SECONDS, seconds
    assert worker.metric("streamrec_users_forgotten_total") == len(gone)
    assert worker.metric("streamrec_deadletters_total") == 0

    # the changelogs' last word on each forgotten user is a tombstone (compaction then
    # removes the user's history); the kept users are still there
    for table in USER_TABLES:
        latest = asyncio.run(latest_by_key(kafka.bootstrap,
                                           changelog_topic(env["STREAMREC_APP_ID"], table)))
        assert all(u.encode() in latest and latest[u.encode()] is None for u in gone), table
        assert all(latest.get(u.encode()) is not None for u in kept), table
    lists = asyncio.run(latest_by_key(kafka.bootstrap, env["STREAMREC_TOPIC_RECOMMENDATIONS"]))
    assert all(lists[u.encode()] is None for u in gone)
    status, body = worker._get(f"/users/{gone[0]}/recommendations")
    assert status == 200
    assert json.loads(body)["known_user"] is False

    # a replacement worker on an empty disk rebuilds its tables from the changelogs only
    # (and reads events again from the committed offsets: the forgotten users' events,
    # sent before the stream, must be behind them; a CI run once saw all ten users come
    # back, not reproduced since: the offsets and the new worker's seeks say why, if again)
    # The kill comes once the group has committed past the forgotten users' events: a
    # user forgotten while their events are not yet committed comes back if the worker
    # dies before the next commit (docs/operations.md, "Forgetting a user"); a full-suite
    # run once saw no commit at all in the ~10 s before the kill, so the wait is bounded
    # and says so
    events_topic = env["STREAMREC_TOPIC_EVENTS"]
    needed = {(events_topic, p): 0 for p, _ in positions}
    for partition, offset in positions:
        needed[(events_topic, partition)] = max(needed[(events_topic, partition)], offset + 1)
    deadline = time.monotonic() + 60
    committed = asyncio.run(committed_offsets(kafka.bootstrap, env["STREAMREC_APP_ID"]))
    while any(committed.get(tp, -1) < end for tp, end in needed.items()) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
        committed = asyncio.run(committed_offsets(kafka.bootstrap, env["STREAMREC_APP_ID"]))
    assert all(committed.get(tp, -1) >= end for tp, end in needed.items()), (
        f"the group did not commit past the first events within 60 s: {committed}, "
        f"needed {needed}")
    worker.kill()
    shutil.rmtree(env["STREAMREC_DATA_DIR"])
    worker.start().wait_ready(within=120)
    seeks = [line for line in worker.log.read_text(errors="replace").splitlines()
             if "no committed offset" in line or "commit held" in line]
    assert [_held(worker, u) for u in gone] == [None] * len(gone), (
        f"committed before the kill: {committed}; seeks: {seeks[-10:]}")
    assert all(_held(worker, u) == everything for u in kept)
