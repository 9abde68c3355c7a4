"""How a behaviour model's weight in the ranker is chosen from its validation lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from app.train.weight import best_scale

pytestmark = pytest.mark.unit


def test_the_weight_moves_only_on_evidence_beyond_the_noise() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(2_000)
    noisy = {0.5: base + rng.normal(0, 0.05, 2_000) - 0.001, 1.0: base,
             1.5: base + rng.normal(0, 0.05, 2_000) + 0.001}
    scale, gain, stderr = best_scale(noisy)
    assert scale == 1.0                   # a hair better is noise: it stays at 1
    assert gain < 2 * stderr

    clear = {0.5: base + 0.02, 1.0: base, 1.5: base - 0.01}
    scale, gain, stderr = best_scale(clear)
    assert (scale, round(gain, 6), round(stderr, 9)) == (0.5, 0.02, 0.0)


def test_a_tie_goes_to_the_smaller_scale_and_a_grid_without_1_takes_its_best() -> None:
    base = np.linspace(0, 1, 50)
    assert best_scale({0.25: base + 0.1, 0.75: base + 0.1, 1.0: base})[0] == 0.25
    assert best_scale({0.25: base, 0.5: base + 0.1})[0] == 0.5


def test_train_ships_the_weight_it_chose_inside_the_artefact(tmp_path: Path) -> None:
    """`streamrec train` on a small shop log: trains, exports, then asks the worker's
    recommender for every validation user's list at each scale and once without the model;
    the artefact carries the choice, its version covers it, and the worker loads it."""
    from typer.testing import CliRunner

    from app.cli import cli
    from app.encoder.behaviour import RANKER_FILE, SequenceModel
    from app.evaluation.split import load
    from app.train.export import content_hash
    from app.train.weight import SCALES, validation_split
    from tests.support.own_data import generated_shop

    spec = generated_shop(tmp_path / "shop")
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", "--dataset", str(spec), "--epochs", "3",
                                      "--dim", "16", "--blocks", "1", "--length", "16",
                                      "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = json.loads((out / RANKER_FILE).read_text())
    assert manifest["ranker"] == chosen
    assert RANKER_FILE in manifest["files"]
    assert manifest["version"] == content_hash(out, manifest["files"])
    held = validation_split(load(str(spec)))
    assert chosen["users"] == len(held.targets) > 100
    table = {float(s): v for s, v in chosen["validation_ndcg@10"].items()}
    assert set(table) == set(SCALES)
    assert all(0.0 <= v <= 1.0 for v in table.values())
    best = max(sorted(table), key=lambda s: table[s])
    assert chosen["sequence_scale"] in (best, 1.0)
    assert chosen["sequence_weight"] == chosen["sequence_scale"] * 1.25
    served = SequenceModel.load(out)
    assert (served.version, served.space.scale) == (manifest["version"],
                                                    chosen["sequence_scale"])
