"""Two workers on Apache Kafka: they split the partitions, route each user's requests to the
owner, and when one dies the other takes its partitions with its users' state."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgspec
import pytest

from app.broker.apache import KafkaBroker, free_port
from app.contract.records import View
from tests.integration.test_recommendations import CATALOGUE, TS, _items
from tests.support.kafka_io import committed_offsets, produce
from tests.support.worker import WorkerProcess, isolated_env

USERS = [f"user-{n}" for n in range(12)]
ITEMS = list(CATALOGUE)


def _recent(worker: WorkerProcess, user: str) -> list[str] | None:
    status, body = worker._get(f"/users/{user}")
    if status != 200:
        return None
    return [r["item_id"] for r in json.loads(body)["recent"]]


def _wait_all_known(worker: WorkerProcess, expected: dict[str, list[str]],
                    within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    missing: list[str] = list(expected)
    while time.monotonic() < deadline:
        missing = [u for u, items in expected.items() if _recent(worker, u) != items]
        if not missing:
            return
        time.sleep(0.5)
    raise AssertionError(f"users not served correctly: {missing}")


@pytest.mark.slow
def test_two_workers_split_route_and_fail_over(kafka: KafkaBroker, tmp_path: Path) -> None:
    env = isolated_env(kafka.bootstrap, tmp_path / "a", partitions=4)
    env_b = {**env, "STREAMREC_DATA_DIR": str(tmp_path / "b"),
             "STREAMREC_WEB_PORT": str(free_port())}
    a = WorkerProcess(env, tmp_path / "a.log").start()
    b = WorkerProcess(env_b, tmp_path / "b.log").start()
    try:
        a.wait_ready()
        b.wait_ready()
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items()))
        a.wait_metric("streamrec_catalogue_items", len(CATALOGUE))
        b.wait_metric("streamrec_catalogue_items", len(CATALOGUE))  # both hold it all
        expected = {u: [ITEMS[n % len(ITEMS)], ITEMS[(n + 3) % len(ITEMS)]]
                    for n, u in enumerate(USERS)}
        events = [
            (u.encode(), msgspec.json.encode(View(v=1, event_id=f"{u}-{i}", user_id=u,
                                                  ts=TS + i, item_id=item)))
            for u, items in expected.items() for i, item in enumerate(items)
        ]
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], events))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = sum(w.metric("streamrec_input_records_total", topic="events",
                                outcome="accepted") for w in (a, b))
            if done >= len(events):
                break
            time.sleep(0.3)
        shares = [w.metric("streamrec_input_records_total", topic="events", outcome="accepted")
                  for w in (a, b)]
        assert sum(shares) == len(events)
        assert all(s > 0 for s in shares), shares  # the partitions are split
        # every user is answered through either worker: requests are routed to the owner
        _wait_all_known(a, expected)
        _wait_all_known(b, expected)
        # the group's commit: every state written before it is on its changelog (each
        # worker holds its writes until then: STREAMREC_CHANGELOG_BUFFER_MB)
        topic = env["STREAMREC_TOPIC_EVENTS"]
        deadline = time.monotonic() + 30
        while sum(offset for (name, _), offset in asyncio.run(committed_offsets(
                kafka.bootstrap, env["STREAMREC_APP_ID"])).items()
                  if name == topic) < len(events):
            assert time.monotonic() < deadline, "the events were not committed"
            time.sleep(0.3)
    finally:
        b.kill()
    try:
        # a takes over b's partitions and recovers b's users from the changelog
        _wait_all_known(a, expected, within=90)
        # and regrows its in-memory co-visitation graph from all of them
        deadline = time.monotonic() + 60
        while f"regrown from {len(USERS)} stored users" not in a.log.read_text():
            assert time.monotonic() < deadline, "co-visitation was not regrown"
            time.sleep(0.5)
        status, body = a._get(f"/items/{ITEMS[0]}")
        assert status == 200
        assert json.loads(body)["covisited"]
    finally:
        a.stop()
