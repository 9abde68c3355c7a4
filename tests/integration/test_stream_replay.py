"""The honest online protocol for the behaviour model (Apache Kafka, MovieLens-100K): the
replay's `sequence-stream` variant stops the producer at fixed points, lets `streamrec
train --stream` train a round on what was streamed so far, waits until the worker serves
what the round published, and goes on; its online lists are scored (no model saw the
ratings they are scored on) beside its end-of-stream lists."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.broker.apache import KafkaBroker
from app.evaluation.replay import StreamTraining, replay
from app.evaluation.report import evaluate_runs
from app.evaluation.split import load

pytest.importorskip("torch")
pytestmark = pytest.mark.timeout(1800)


@pytest.mark.slow
def test_the_stream_trained_variant_is_scored_online_with_a_model_trained_before_each_list(
        kafka: KafkaBroker, tmp_path: Path) -> None:
    split = load("ml-100k")
    training = StreamTraining(every=80_000, first_epochs=3, update_epochs=1)
    run = asyncio.run(replay(split, kafka.bootstrap, tmp_path, "sequence-stream", k=50,
                             say=print, training=training))
    rounds = run.behaviour_model["stream_rounds"]
    # two parts of the 153,946 events, a round after each (the second after the last event)
    assert [r["after_events"] for r in rounds] == [80_000, run.events]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["published"]                        # no model served yet
    # each round trained on exactly what was streamed before it
    assert [r["events"] for r in rounds] == [r["after_events"] for r in rounds]
    assert rounds[1]["served_valid_ndcg@10"] is not None  # judged against round 1's model
    served = rounds[1]["published"] or rounds[0]["published"]
    assert run.behaviour_model["version"] == served
    assert set(run.end_lists) == set(split.targets)
    # the worker chose the model's weight from its users' next items (app.core.weighing):
    # every list after round 1's model arrived was ranked at every scale too
    evidence = run.model["behaviour_model"]["scale_evidence"]
    assert evidence["version"] == served
    assert evidence["samples"] > 100
    assert evidence["scale"] == run.model["behaviour_model"]["scale"]
    assert len(evidence["ndcg@k_by_scale"]) == 7
    report = evaluate_runs(split, [run], say=lambda _: None)
    online = report["models"]["sequence-stream"]["all"]
    popular = report["models"]["popularity"]["all"]
    print(f"online {online['NDCG@10']:.4f}, end of stream "
          f"{report['end_of_stream']['sequence-stream']['NDCG@10']:.4f}, popularity "
          f"{popular['NDCG@10']:.4f}; rounds {rounds}")
    assert online["NDCG@10"] > 1.5 * popular["NDCG@10"]
