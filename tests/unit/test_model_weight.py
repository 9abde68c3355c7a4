"""How a behaviour model's weight in the ranker is chosen from its validation lists."""

from __future__ import annotations

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
