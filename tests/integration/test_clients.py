"""The client examples of docs/clients.md (examples/), run as a user runs them against a
worker on Apache Kafka: aiokafka, confluent-kafka (librdkafka) and kcat each upsert items,
send a view, read the list published for it and, for the Python clients, send a click."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from app.broker.apache import KafkaBroker
from app.contract.records import ItemUpsert, Recommendation
from tests.support.debian import environment, program
from tests.support.kafka_io import produce
from tests.support.worker import WorkerProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TS = 1_700_000_000_000


CLIENTS = {
    "aiokafka": [sys.executable, str(EXAMPLES / "aiokafka_client.py")],
    "confluent-kafka": [sys.executable, str(EXAMPLES / "confluent_client.py")],
    "kcat": ["sh", str(EXAMPLES / "kcat.sh")],
}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_the_client_example_gets_its_users_recommendations(
        client: str, kafka: KafkaBroker, worker: WorkerProcess) -> None:
    env = {**worker.env, "KAFKA_BOOTSTRAP": kafka.bootstrap}
    if client == "kcat":
        env = environment(program("kcat", ["kcat", "librdkafka1", "libyajl2"], "kcat-deb"), env)
    # a catalogue the worker holds before the examples' views, so their lists are not empty
    catalogue = [ItemUpsert(v=1, event_id=f"c-{i}", item_id=i, ts=TS, title=t, category="film")
                 for i, t in (("alien", "Alien (1979)"), ("aliens", "Aliens (1986)"),
                              ("heat", "Heat (1995)"), ("ronin", "Ronin (1998)"))]
    asyncio.run(produce(kafka.bootstrap, worker.env["STREAMREC_TOPIC_ITEMS"],
                        [(u.item_id.encode(), msgspec.json.encode(u)) for u in catalogue]))
    worker.wait_metric("streamrec_catalogue_items", len(catalogue))
    user = f"{client}-user"
    done = subprocess.run([*CLIENTS[client], user], env=env, capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    if client == "kcat":    # kcat prints the record as published
        listed = msgspec.json.decode(done.stdout.strip(), type=Recommendation)
        assert listed.user_id == user
        assert listed.items
    else:
        line = done.stdout.strip().splitlines()[-1]
        assert line.startswith(f"recommendations for {user}: ")
        assert line.split(": ", 1)[1]
        # the click reached the worker, joined to the list it answers
        worker.wait_metric("streamrec_input_records_total", 1, topic="feedback",
                           outcome="accepted")
    assert worker.metric("streamrec_misrouted_total") == 0   # each used murmur2
    assert worker.metric("streamrec_input_records_total", topic="events",
                         outcome="accepted") == 1
