"""The feedback loop end to end on Apache Kafka with two workers: clicks on published lists
become a learnt version on the models topic, which every worker serves to the learning
variant within 5 s (the frozen variant keeps the defaults); generations are checkpointed;
a rollback by command puts a checkpoint back on every worker and the trainer follows it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from app.broker.apache import KafkaBroker, free_port
from app.contract.records import Feedback, FeedbackType, Recommendation, View
from app.core.experiments import Experiment, variant_of
from app.core.ranking import RankerParams
from app.evaluation.tune import publish
from app.settings import Settings
from app.tools import experiment_summary
from tests.integration.test_recommendations import CATALOGUE, TS, _items
from tests.support.kafka_io import produce, read_topic
from tests.support.worker import WorkerProcess, isolated_env, wait_total

ITEMS = list(CATALOGUE)
EXPERIMENT = Experiment("ranker")
USERS = [f"fb-user-{n}" for n in range(24)]


def _model(worker: WorkerProcess) -> dict[str, Any]:
    status, body = worker._get("/model")
    assert status == 200
    result: dict[str, Any] = json.loads(body)
    return result


def _wait_head(workers: list[WorkerProcess], accept: Any, within: float) -> str:
    """Wait until every worker's head satisfies ``accept``; return the version."""
    deadline = time.monotonic() + within
    heads: list[Any] = []
    while time.monotonic() < deadline:
        heads = [_model(w)["head"] for w in workers]
        if all(h is not None and accept(h) for h in heads) and len(
                {h["version"] for h in heads}) == 1:
            return str(heads[0]["version"])
        time.sleep(0.1)
    raise AssertionError(f"heads after {within}s: {heads}")


def _views(round_: int) -> list[tuple[bytes | None, bytes | None]]:
    return [(u.encode(), msgspec.json.encode(View(
        v=1, event_id=f"{u}-r{round_}", user_id=u, ts=TS + 1000 * round_ + n,
        item_id=ITEMS[(n + round_) % len(ITEMS)]))) for n, u in enumerate(USERS)]


def _clicks(recs: list[Recommendation], tag: str) -> list[tuple[bytes | None, bytes | None]]:
    """A click on the third item of each list (the two above it were passed over)."""
    return [(r.user_id.encode(), msgspec.json.encode(Feedback(
        v=1, type=FeedbackType.CLICK, event_id=f"click-{tag}-{r.rec_id}", user_id=r.user_id,
        rec_id=r.rec_id, item_id=r.items[2].item_id, ts=r.source_event_time + 10)))
        for r in recs if len(r.items) >= 3]


def _recs_of_round(bootstrap: str, topic: str, expect: int, round_: int
                   ) -> list[Recommendation]:
    decode = msgspec.json.Decoder(Recommendation).decode
    found = asyncio.run(read_topic(bootstrap, topic, expect, within=60))
    recs = [decode(m.value) for m in found if m.value]
    return [r for r in recs if r.source_event_id.endswith(f"-r{round_}")]


@pytest.mark.slow
def test_clicks_teach_a_version_every_worker_serves_and_a_rollback_restores_one(
        kafka: KafkaBroker, tmp_path: Path) -> None:
    env = {**isolated_env(kafka.bootstrap, tmp_path / "a", partitions=4),
           "STREAMREC_GENERATION_IMPRESSIONS": "20", "STREAMREC_RECOMMENDATION_SIZE": "5",
           "STREAMREC_BEHAVIOUR_SAMPLE": "0"}   # clicks alone teach here (behaviour: below)
    env_b = {**env, "STREAMREC_DATA_DIR": str(tmp_path / "b"),
             "STREAMREC_WEB_PORT": str(free_port())}
    workers = [WorkerProcess(env, tmp_path / "a.log").start(),
               WorkerProcess(env_b, tmp_path / "b.log").start()]
    bootstrap, recs_topic = kafka.bootstrap, env["STREAMREC_TOPIC_RECOMMENDATIONS"]
    learning = [u for u in USERS if variant_of(EXPERIMENT, u) == "learning"]
    assert 4 <= len(learning) <= 20
    try:
        for w in workers:
            w.wait_ready()
            assert _model(w)["head"] is None
        asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items()))
        for w in workers:
            w.wait_metric("streamrec_catalogue_items", len(CATALOGUE))

        # round 0: lists under the defaults, then clicks on them
        asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_EVENTS"], _views(0), batched=True))
        recs = _recs_of_round(bootstrap, recs_topic, len(USERS), 0)
        assert {r.model_version for r in recs} == {RankerParams().version}
        clicked_at = time.monotonic()
        asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_FEEDBACK"], _clicks(recs, "a"),
                            batched=True))
        first = _wait_head(workers, lambda h: h["origin"] == "trainer", within=30)
        reached = time.monotonic() - clicked_at
        print(f"first version {first} on both workers {reached:.2f}s after the clicks")
        assert first.startswith("learning-1."), first
        assert reached < 5.0, f"the learnt version reached every worker in {reached:.1f}s"
        # the trainer publishes from its first batch; the later batches (the clicks may
        # reach it in several) are learnt from within moments
        wait_total(workers, "streamrec_learning_examples_total", 3 * len(recs) - 3,
                    within=10)                          # a click and two skipped each

        # round 1: the learning variant is served the head, the frozen one the defaults;
        # what it shows closes generation 1 (20 items) into a checkpoint
        asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_EVENTS"], _views(1), batched=True))
        recs = _recs_of_round(bootstrap, recs_topic, 2 * len(USERS), 1)
        served = {r.user_id: r.model_version for r in recs}
        assert all(served[u].startswith("learning-1.") for u in learning), served
        assert {served[u] for u in USERS if u not in learning} == {RankerParams().version}
        deadline = time.monotonic() + 30
        while not all(_model(w)["checkpoints"] for w in workers):
            assert time.monotonic() < deadline, [_model(w) for w in workers]
            time.sleep(0.2)
        checkpoint = _model(workers[0])["checkpoints"][-1]["version"]
        assert checkpoint.startswith("learning-1.")

        # clicks on round 1 train generation 2
        asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_FEEDBACK"], _clicks(recs, "b"),
                            batched=True))
        second = _wait_head(workers, lambda h: h["generation"] == 2, within=30)
        assert second.startswith("learning-2.")

        # rollback by command: every worker serves the checkpoint again
        done = subprocess.run([sys.executable, "-m", "app.cli", "model", "rollback"],
                              env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert checkpoint in done.stdout
        _wait_head(workers, lambda h: h["version"] == checkpoint and h["origin"] == "command",
                   within=10)
        # the trainer follows it: its next version is trained from the checkpoint
        asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_FEEDBACK"], _clicks(recs, "c")[:3],
                            batched=True))
        third = _wait_head(workers, lambda h: h["origin"] == "trainer"
                           and h["generation"] >= 3, within=30)
        assert third.startswith("learning-3.")
        assert sum(w.metric("streamrec_model_rollbacks_total", origin="command")
                   for w in workers) == 1
        for w in workers:
            assert w.metric("streamrec_model_updates_total") >= 4
            assert w.metric("streamrec_model_update_delay_seconds_count") >= 1
        # a tuned projection published on the models topic is served without a restart
        w1 = np.eye(384, dtype=np.float32)[::-1].copy()
        tuned = asyncio.run(publish(Settings.model_validate(
            {k.removeprefix("STREAMREC_").lower(): v for k, v in env.items()
             if k.startswith("STREAMREC_")}), w1, "t1", "test"))
        _wait_head(workers, lambda h: h["version"] == tuned.version
                   and h["projection"] == "t1", within=10)
        asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_EVENTS"], _views(2), batched=True))
        recs = _recs_of_round(bootstrap, recs_topic, 3 * len(USERS), 2)
        assert {r.model_version for r in recs if r.user_id in learning} == {tuned.version}

        shown = sum(w.metric("streamrec_shown_items_total", variant="learning")
                    for w in workers)
        clicks = sum(w.metric("streamrec_feedback_total", variant="learning", type="click")
                     for w in workers)
        assert shown >= 2 * 5 * len(learning)
        assert clicks >= 2 * len(learning)
        # the experiment summary (`streamrec experiment`) sums the same over both workers
        summary = experiment_summary([w.base_url + "/metrics" for w in workers],
                                     ["frozen", "learning"])
        assert summary["workers"] == 2
        assert summary["variants"]["learning"]["shown"] == shown
        assert summary["variants"]["learning"]["clicks"] == clicks
        assert summary["variants"]["frozen"]["clicks"] > 0
        assert "z_vs_frozen" in summary["variants"]["learning"]
    finally:
        for w in workers:
            w.stop()


def test_users_next_items_teach_a_version_without_any_click(kafka: KafkaBroker,
                                                            tmp_path: Path) -> None:
    """Behaviour learning: the second round's views are each user's next item; sampled
    (all of them here), each becomes preferences over the candidates the user had before
    and a pair (interest before, item) for the projection W1; the trainer learns a version
    and a projection from them and the learning variant is served both."""
    env = {**isolated_env(kafka.bootstrap, tmp_path / "a", partitions=4),
           "STREAMREC_BEHAVIOUR_SAMPLE": "1", "STREAMREC_RECOMMENDATION_SIZE": "5"}
    worker = WorkerProcess(env, tmp_path / "a.log").start()
    bootstrap, recs_topic = kafka.bootstrap, env["STREAMREC_TOPIC_RECOMMENDATIONS"]
    try:
        worker.wait_ready()
        asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items()))
        worker.wait_metric("streamrec_catalogue_items", len(CATALOGUE))
        for round_ in range(3):
            asyncio.run(produce(bootstrap, env["STREAMREC_TOPIC_EVENTS"], _views(round_),
                                batched=True))
            _recs_of_round(bootstrap, recs_topic, (round_ + 1) * len(USERS), round_)
        head = _wait_head([worker], lambda h: h["origin"] == "trainer", within=30)
        assert head.startswith("learning-")
        learnt = worker.metric("streamrec_behaviour_examples_total", outcome="learnt")
        missed = worker.metric("streamrec_behaviour_examples_total", outcome="not_a_candidate")
        assert learnt > 0
        assert learnt + missed == 2 * len(USERS)      # rounds 1 and 2: a next item each
        assert worker.metric("streamrec_learning_examples_total", reward="positive") > 0
        assert worker.metric("streamrec_feedback_total", variant="learning", type="click") == 0
        # the projection: every next item after the first round had an interest before it
        worker.wait_metric("streamrec_projection_pairs_total", 2 * len(USERS))
        assert worker.metric("streamrec_projection_pairs_total") == 2 * len(USERS)
        assert worker.metric("streamrec_projection_loss") > 0
        model = _model(worker)
        learnt = model["head"]["projection"]
        assert learnt
        assert learnt.startswith("online-")
        assert model["variants"]["learning"]["projection"] == learnt   # served, not just read
        assert model["variants"]["frozen"]["projection"] is None
    finally:
        worker.stop()
