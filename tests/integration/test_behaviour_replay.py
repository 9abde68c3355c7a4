"""The behaviour model through the real pipeline: a small model trained on MovieLens-100K
(torch, the training extra), exported to ONNX and served by a worker on Apache Kafka while
the split streams; the lists it gives at the end of the stream score what the model scores
offline on the same targets (the worker serves the model faithfully)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.broker.apache import KafkaBroker
from app.evaluation.replay import replay
from app.evaluation.report import evaluate_runs, markdown
from app.evaluation.split import load

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.timeout(1800)


def test_a_served_model_s_lists_score_what_the_model_scores_offline(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    from app.settings import get_settings
    from app.train.export import export
    from app.train.model import ModelConfig
    from app.train.run import TrainConfig, sample_tokens, text_vectors, train

    split = load("ml-100k")
    vectors = text_vectors(split, get_settings().model_dir())
    config = ModelConfig(
        items=len(split.items), length=50, dim=32, blocks=1, text_dim=int(vectors.shape[1])
    )
    model, _, offline = train(split, config, TrainConfig(epochs=8, seed=0), vectors)
    folder = tmp_path / "model"
    manifest = export(model, split.items, sample_tokens(split, config.length), folder, offline)
    assert manifest["parity_max_abs"] < 1e-4

    run = asyncio.run(
        replay(
            split,
            kafka.bootstrap,
            tmp_path,
            "sequence-only",
            k=50,
            say=lambda _: None,
            behaviour_model=folder,
        )
    )
    assert run.behaviour_model["version"] == manifest["version"]
    assert set(run.end_lists) == set(split.targets)
    assert all(len(items) == 50 for items in run.end_lists.values())
    # the model's picks are explained by a history item, not passed off as popular
    assert run.explanation_kinds.get("history", 0) > run.explanation_kinds.get("popular", 0)

    report = evaluate_runs(split, [run], say=lambda _: None)
    assert "sequence-only" not in report["models"]  # trained on those lists' targets
    served = report["end_of_stream"]["sequence-only"]
    popular = report["models"]["popularity"]["all"]
    print(f"offline {offline}, served {served['NDCG@10']:.4f} / {served['HR@10']:.4f}")
    assert offline["ndcg@10"] > 1.2 * popular["NDCG@10"], (offline, popular)
    # the worker reads the stored sequence, scores the catalogue, drops seen items and
    # re-ranks (MMR, a little popularity and freshness): close to, not exactly, offline
    assert abs(served["NDCG@10"] - offline["ndcg@10"]) <= 0.15 * offline["ndcg@10"], (
        served,
        offline,
    )
    assert report["history_items_shown_end_of_stream"]["sequence-only"]["top"] == 0
    assert "scored at the end of the stream only" in markdown(report, "test", {})
