"""The behaviour model trained from the stream (Apache Kafka): `streamrec train --stream`
reads the events a worker reads, trains a round, publishes it, and the worker serves it
without a restart; stopped and started again, the trainer resumes where it committed,
folds only what is new (a new item among it, a forgotten user dropped), warm-starts a
second round and publishes it only because it beats the served model on the same newest
held-back events."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.contract.records import ItemUpsert, View
from tests.integration.test_model_swap import _wait_served
from tests.support.kafka_io import produce
from tests.support.worker import WorkerProcess

pytest.importorskip("torch")
TS = 1_700_000_000_000
MINUTE = 60_000
ITEMS = 24
LENGTH = 10


def _item(item: str, title: str) -> tuple[bytes | None, bytes | None]:
    return item.encode(), msgspec.json.encode(ItemUpsert(
        v=1, event_id=f"c-{item}", item_id=item, ts=TS, title=title, category="film"))


def _walk(user: int, start: int, count: int, items: list[str]
          ) -> list[tuple[bytes | None, bytes | None]]:
    """User ``user`` walks ``items`` in order from their own starting point: the next item
    is always the one after the last (what the model has to learn)."""
    key = f"u{user}"
    return [(key.encode(), msgspec.json.encode(View(
        v=1, event_id=f"{key}-{n}", user_id=key, ts=TS + n * MINUTE,
        item_id=items[(user + n) % len(items)]))) for n in range(start, start + count)]


def _train(worker: WorkerProcess, out: Path, *options: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "train", "--stream", "--rounds", "1",
         "--out", str(out), "--length", str(LENGTH), "--dim", "16", "--blocks", "1",
         "--dropout", "0", "--valid-users", "40", *options],
        env=worker.env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_a_model_trained_from_the_stream_reaches_the_worker_and_keeps_learning(
        worker: WorkerProcess, tmp_path: Path) -> None:
    bootstrap = worker.env["STREAMREC_BROKER_URL"]
    env = worker.env
    items = [f"i{n}" for n in range(ITEMS)]
    asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_ITEMS"],
                        [_item(i, f"Film number {i[1:]}") for i in items]))
    first = [record for u in range(60) for record in _walk(u, 0, LENGTH, items)]
    asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_EVENTS"], first))

    out = tmp_path / "trainer"
    one = _train(worker, out, "--every", str(len(first)), "--epochs", "1")["rounds"][-1]
    assert one["round"] == 1
    assert one["events"] == len(first)
    assert one["items"] == ITEMS
    assert one["valid_users"] == 40
    assert one["published"]
    assert one["why"] == "no model is served"
    _wait_served(worker, one["published"])
    assert worker.metric("streamrec_behaviour_model_info", version=one["published"]) == 1

    # more of the walk, a new item some users reach, a user forgotten
    walked = [*items[:12], "i-new", *items[12:]]
    asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_ITEMS"], [_item("i-new", "A new film")]))
    asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_USERS"], [(b"u0", None)]))
    more = [record for u in range(1, 60) for record in _walk(u, LENGTH, 3, walked)]
    arrived = time.monotonic()
    asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_EVENTS"], more))
    two = _train(worker, out, "--every", str(len(more)), "--epochs", "1",
                 "--update-epochs", "8")["rounds"][-1]
    took = time.monotonic() - arrived
    assert two["round"] == 2
    assert two["events"] == len(first) + len(more)          # resumed: nothing read twice
    assert two["items"] == ITEMS + 1
    assert two["forgotten"] == 1
    assert two["served"] == one["published"]
    assert two["served_valid_ndcg@10"] is not None
    assert two["published"], two["why"]
    assert two["valid_ndcg@10"] > two["served_valid_ndcg@10"]
    _wait_served(worker, two["published"])
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    assert (out / "rounds.png").exists()
    assert took < 300                                        # the 5 minutes
    assert worker.process is not None
    assert worker.process.poll() is None
