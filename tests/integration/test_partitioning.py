"""A producer that ignores Kafka's default partitioner: records sent to the wrong partition
of `events` on Apache Kafka are re-routed by the worker to their key's partition and
applied exactly once there, never applied where they landed, and counted. The partition
watchdog asks the real broker about the partitions left quiet, without an error."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiokafka import AIOKafkaProducer

from app.broker.apache import KafkaBroker
from app.contract.partitioning import partition_of
from app.contract.samples import good_view
from tests.support.worker import WorkerProcess

TS = 1_700_000_000_000


async def _send_to(bootstrap: str, topic: str,
                   records: list[tuple[bytes, bytes, int]]) -> list[int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return [(await producer.send_and_wait(topic, value, key=key, partition=p)).partition
                for key, value, p in records]
    finally:
        await producer.stop()


def _views(worker: WorkerProcess, user: str) -> int:
    status, body = worker._get(f"/users/{user}")
    return int(json.loads(body)["counts"].get("view", 0)) if status == 200 else 0


@pytest.mark.slow
def test_records_on_the_wrong_partition_are_rerouted_and_applied_once(
        kafka: KafkaBroker, worker: WorkerProcess) -> None:
    topic = worker.env["STREAMREC_TOPIC_EVENTS"]
    partitions = int(worker.env["STREAMREC_PARTITIONS"])
    users = [f"misplaced-{n}" for n in range(6)]
    records = []
    for user in users:
        home = partition_of(user.encode(), partitions)
        for n in range(3):   # two on the right partition, one on a wrong one
            wrong = n == 1
            records.append((user.encode(), good_view(user, f"{user}-{n}", f"i{n}", TS + n),
                            (home + 1) % partitions if wrong else home))
    landed = asyncio.run(_send_to(kafka.bootstrap, topic, records))
    assert landed == [p for _, _, p in records]
    worker.wait_metric("streamrec_misrouted_total", len(users), topic="events")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_views(worker, u) < 3 for u in users):
        time.sleep(0.2)
    assert {u: _views(worker, u) for u in users} == dict.fromkeys(users, 3)
    assert worker.metric("streamrec_misrouted_total", topic="events") == len(users)
    assert worker.metric("streamrec_input_records_total", topic="events",
                         outcome="rejected") == 0
    # The partitions nothing was sent to stay quiet: the watchdog asks the broker about them
    # (through the Kafka client's own thread; asked from the worker's loop it raised).
    worker.wait_metric("streamrec_partition_stalls_total", 1, within=60, action="idle")
    assert worker.metric("streamrec_processing_errors_total", topic="metrics") == 0
    assert worker.metric("streamrec_partition_stalls_total", action="reported") == 0
