"""A behaviour model travels to a running worker through the models topic (Apache Kafka):
`streamrec model publish` sends it in chunks, the worker checks and loads it and serves it
without a restart; a second version replaces it, and `streamrec model rollback --behaviour`
goes back to the first, then to none."""

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

from app.contract.records import View
from app.settings import Settings
from app.tools import publish_if_better
from tests.integration.test_recommendations import CATALOGUE, TS, _items
from tests.support.kafka_io import produce
from tests.support.worker import WorkerProcess

torch = pytest.importorskip("torch")
PADDING_ITEMS = 3_000   # items no one streams: a model of a few MB, sent in several chunks


def _export(folder: Path, seed: int, valid: float) -> str:
    """An untrained (seeded) model over the test catalogue, exported as `streamrec train`
    exports: what matters here is how it travels, not what it knows."""
    from app.core.sequence import tokens
    from app.train.export import export
    from app.train.model import BehaviourModel, ModelConfig

    torch.manual_seed(seed)
    items = [*CATALOGUE, *(f"unseen-{n}" for n in range(PADDING_ITEMS))]
    config = ModelConfig(items=len(items), length=8, dim=64, blocks=1)
    model = BehaviourModel(config).eval()
    sample = tokens([[(1 + (n + k) % len(CATALOGUE), 1, TS + k) for k in range(5)]
                     for n in range(4)], config.length)
    manifest = export(model, items, sample, folder,
                      {"seed": seed, "dataset": "test", "valid_ndcg@10": valid})
    return str(manifest["version"])


def _cli(worker: WorkerProcess, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", "model", *args], env=worker.env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _served(worker: WorkerProcess) -> Any:
    status, body = worker._get("/model")
    assert status == 200
    return json.loads(body)["behaviour_model"]


def _wait_served(worker: WorkerProcess, version: str | None, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        model = _served(worker)
        if (model["version"] if model else None) == version:
            return
        time.sleep(0.3)
    raise AssertionError(f"worker serves {_served(worker)}, not {version}")


def _views(user: str, start: int, count: int) -> list[tuple[bytes | None, bytes | None]]:
    items = list(CATALOGUE)
    return [(user.encode(), msgspec.json.encode(View(
        v=1, event_id=f"{user}-{n}", user_id=user, ts=TS + n, item_id=items[n % len(items)])))
        for n in range(start, start + count)]


@pytest.mark.slow
def test_a_published_model_is_served_without_a_restart_and_rolled_back(
        worker: WorkerProcess, tmp_path: Path) -> None:
    bootstrap = worker.env["STREAMREC_BROKER_URL"]
    first, second = _export(tmp_path / "m1", 1, 0.2), _export(tmp_path / "m2", 2, 0.1)
    assert first != second
    assert (tmp_path / "m1" / "user.onnx").stat().st_size > 1_000_000   # several chunks
    asyncio.run(produce(bootstrap, worker.env["STREAMREC_TOPIC_ITEMS"], _items()))
    worker.wait_metric("streamrec_catalogue_items", len(CATALOGUE))
    assert _served(worker) is None
    pid = worker.process.pid if worker.process else None

    out = _cli(worker, "publish", str(tmp_path / "m1"), "--note", "first")
    assert first in out
    _wait_served(worker, first)
    assert worker.metric("streamrec_behaviour_model_info", version=first) == 1
    # the model is used: its user vectors and its candidates reach the lists
    asyncio.run(produce(bootstrap, worker.env["STREAMREC_TOPIC_EVENTS"], _views("u1", 0, 4)))
    worker.wait_metric("streamrec_behaviour_vectors_total", 1)
    worker.wait_metric("streamrec_candidates_total", 1, source="sequence")

    # a trainer's model that does not beat the served one on validation is not published
    settings = Settings(broker_url=bootstrap, topic_models=worker.env["STREAMREC_TOPIC_MODELS"])
    head, why = asyncio.run(publish_if_better(settings, tmp_path / "m2", "trainer", False))
    assert head is None
    assert why == "valid_ndcg@10 0.1000 does not beat the served 0.2000"
    _cli(worker, "publish", str(tmp_path / "m2"), "--note", "second")   # an operator's
    _wait_served(worker, second)
    assert worker.metric("streamrec_behaviour_model_info", version=first) == 0
    shown = _cli(worker, "show")
    assert f"behaviour model: {second} served" in shown
    assert first in shown

    _cli(worker, "rollback", "--behaviour")
    _wait_served(worker, first)
    before = worker.metric("streamrec_behaviour_vectors_total")
    _cli(worker, "rollback", "--behaviour", "--to", "none")
    _wait_served(worker, None)
    asyncio.run(produce(bootstrap, worker.env["STREAMREC_TOPIC_EVENTS"], _views("u1", 4, 2)))
    worker.wait_metric("streamrec_recommendations_total", 2)
    assert worker.metric("streamrec_behaviour_vectors_total") == before   # no model: not asked
    assert worker.metric("streamrec_processing_errors_total", topic="behaviour-model") == 0
    assert worker.process is not None
    assert worker.process.poll() is None
    assert worker.process.pid == pid                                 # never restarted
