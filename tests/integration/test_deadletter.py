"""Bad input on a real Apache Kafka broker: every class lands in the dead-letter topic with
its reason and source position, nothing crashes, and the good events around it flow."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from app.broker.apache import KafkaBroker
from app.contract.deadletter import read_headers
from app.contract.samples import bad_event_samples, good_view
from app.contract.validate import Reason
from app.core.state import StateCodec, UserState, window_of
from tests.support.kafka_io import produce, read_topic
from tests.support.worker import WorkerProcess, isolated_env

MAX_PAYLOAD = 4096
TS = 1_700_000_000_000


@pytest.fixture
def worker(kafka: KafkaBroker, tmp_path: Path) -> Iterator[WorkerProcess]:
    env = isolated_env(kafka.bootstrap, tmp_path / "data")
    env["STREAMREC_MAX_PAYLOAD_BYTES"] = str(MAX_PAYLOAD)
    process = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _views(user: str, first: int, count: int) -> list[tuple[bytes | None, bytes | None]]:
    return [
        (user.encode(), good_view(user, f"{user}-{i}", f"item-{i % 7}", TS + i))
        for i in range(first, first + count)
    ]


def test_every_bad_input_is_dead_lettered_and_good_events_flow(
    kafka: KafkaBroker, worker: WorkerProcess
) -> None:
    env = worker.env
    bad = bad_event_samples("alice", "alice-bad", MAX_PAYLOAD)
    assert {s.reason for s in bad} == set(Reason) - {Reason.PROCESSING_ERROR}
    before = _views("alice", 0, 10) + _views("bob", 0, 10)
    after = _views("alice", 10, 10) + _views("bob", 10, 10)
    duplicate = [before[3]]
    records = before + [(s.key, s.value) for s in bad] + duplicate + after
    positions = asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], records))

    # items, feedback and users are validated too
    bad_item = (b"i-1",
                b'{"v":1,"op":"upsert","event_id":"x","item_id":"i-1","ts":1700000000000}')
    bad_feedback = (b"alice", b'{"v":1,"type":"like","event_id":"f","user_id":"alice",'
                              b'"rec_id":"r","item_id":"i","ts":1700000000000}')
    bad_user = (b"alice", b'{"v":1,"event_id":"p","user_id":"alice","ts":"soon"}')
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], [bad_item]))
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_FEEDBACK"], [bad_feedback]))
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_USERS"], [bad_user]))

    expected_dead = len(bad) + 3
    dead = asyncio.run(read_topic(kafka.bootstrap, env["STREAMREC_TOPIC_DEADLETTER"],
                                  expect=expected_dead))
    assert len(dead) == expected_dead

    events_topic = env["STREAMREC_TOPIC_EVENTS"]
    sample_at = {positions[len(before) + i]: s for i, s in enumerate(bad)}
    seen_reasons = set()
    for record in dead:
        headers = read_headers(record.headers)
        if headers["topic"] != events_topic:
            continue
        source = (int(headers["partition"]), int(headers["offset"]))
        sample = sample_at[source]
        assert headers["reason"] == sample.reason.value
        assert headers["detail"]
        assert int(headers["received_at"]) > TS
        assert record.key == sample.key
        assert (record.value or b"") == sample.value  # the original bytes, untouched
        seen_reasons.add(sample.reason)
    assert seen_reasons == {s.reason for s in bad}
    others = {read_headers(r.headers)["topic"]: read_headers(r.headers)["reason"] for r in dead}
    assert others[env["STREAMREC_TOPIC_ITEMS"]] == "missing_field"
    assert others[env["STREAMREC_TOPIC_FEEDBACK"]] == "unknown_type"
    assert others[env["STREAMREC_TOPIC_USERS"]] == "wrong_type"

    def records(outcome: str) -> float:
        return worker.metric("streamrec_input_records_total", topic="events", outcome=outcome)

    good = len(before) + len(after)
    worker.wait_metric("streamrec_input_records_total", good, topic="events", outcome="accepted")
    assert records("accepted") == good
    assert records("duplicate") == 1
    assert records("rejected") == len(bad)
    for sample in bad:
        assert worker.metric("streamrec_deadletters_total", topic="events",
                             reason=sample.reason.value) == 1
    assert worker.metric("streamrec_events_total", type="view") == good
    assert worker.process is not None
    assert worker.process.poll() is None

    # The state the worker wrote (its changelog) counts exactly the good events per user.
    changelog = f"{env['STREAMREC_APP_ID']}-user-state-changelog"
    states = asyncio.run(read_topic(kafka.bootstrap, changelog, expect=2, within=20))
    latest = {r.key: r.value for r in states}
    codec = StateCodec(UserState)
    for user in (b"alice", b"bob"):
        state = codec.decode(latest[user])
        assert state.counts == {"view": 20}
        assert len(window_of(state.seen)) == 20
    assert msgspec.msgpack.decode(latest[b"alice"])  # plain msgpack, readable by any client
