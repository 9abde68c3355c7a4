"""The online learner recovers a known answer from a synthetic click stream."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from app.core.learning import (
    FEATURES,
    LearnerConfig,
    LearnerState,
    click_probability,
    learning_rate,
    update,
)
from app.core.ranking import SIGNED, RankerParams

F = len(FEATURES)


def wide(*weights: float) -> np.ndarray:
    """Weights for the first features, 0 for the rest."""
    return np.array(list(weights) + [0.0] * (F - len(weights)))


def synthetic_stream(true_weights: np.ndarray, bias: float, batches: int, size: int,
                     seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        x = rng.uniform(0.0, 1.0, size=(size, F))
        p = 1.0 / (1.0 + np.exp(-(x @ true_weights + bias)))
        out.append((x, (rng.uniform(size=size) < p).astype(np.float64)))
    return out


def test_the_learner_converges_to_the_weights_that_generated_the_clicks() -> None:
    truth = wide(3.0, 2.0, 0.0, 0.5, 0.0)  # semantic and co-visitation matter most
    state = LearnerState.from_params(RankerParams())   # starts from the defaults
    config = LearnerConfig(l2=0.0)
    for x, y in synthetic_stream(truth, -3.0, batches=4000, size=64):
        state = update(state, x, y, config)
    assert state.seen == 4000 * 64
    cosine = float(state.weights @ truth / np.linalg.norm(state.weights) / np.linalg.norm(truth))
    assert cosine > 0.98, (state.weights, cosine)
    assert np.allclose(state.weights, truth, atol=0.35), state.weights
    assert abs(state.bias + 3.0) < 0.4
    # and it ranks a held-out set like the truth does
    x = np.random.default_rng(9).uniform(size=(200, F))
    learnt, true = np.argsort(-(x @ state.weights)), np.argsort(-(x @ truth))
    assert len(set(learnt[:20]) & set(true[:20])) >= 16


def test_steps_are_clipped_decay_and_weights_stay_non_negative() -> None:
    state = LearnerState.from_params(RankerParams())
    config = LearnerConfig(learning_rate=1.0, max_gradient=0.1)
    x = np.full((8, F), 100.0)                      # absurd features, all clicked
    after = update(state, x, np.ones(8), config)
    moved = np.append(after.weights - state.weights, after.bias - state.bias)
    assert np.linalg.norm(moved) <= 0.1 + 1e-9      # one batch moves at most lr * clip
    assert learning_rate(config, 0) > learning_rate(config, 1_000) > learning_rate(config, 9_000)
    none_clicked = update(state, np.ones((8, F)), np.zeros(8), LearnerConfig(learning_rate=50.0))
    signed = np.array([name in SIGNED for name in FEATURES])
    assert (none_clicked.weights[~signed] >= 0).all()
    assert (none_clicked.weights[signed] < 0).all()   # a discount may be learnt
    assert update(state, np.zeros((0, F)), np.zeros(0)) is state


def test_without_signal_the_weights_return_to_the_prior() -> None:
    state = LearnerState.from_params(RankerParams())
    pushed = LearnerState(weights=state.prior + 1.0, prior=state.prior)
    config = LearnerConfig(l2=1.0, learning_rate=0.5)
    x = np.zeros((16, F))                           # features carry no information
    for _ in range(2000):
        pushed = update(pushed, x, np.full(16, 0.5), config)
    assert np.allclose(pushed.weights, state.prior, atol=0.05)


def test_learnt_weights_become_versioned_ranker_parameters() -> None:
    from app.core.versions import ModelVersion, as_params

    state = LearnerState.from_params(RankerParams())
    assert np.allclose(click_probability(state, np.zeros((1, F))), 0.5)
    version = ModelVersion(version="learning-7.1", generation=7,
                           weights=(2.0, 1.0, 0.1, 0.0, 0.0))
    params = as_params(version, RankerParams(mmr_lambda=0.9))
    assert params.version == "learning-7.1"
    assert (params.semantic, params.covisit, params.popularity) == (2.0, 1.0, 0.1)
    assert params.mmr_lambda == 0.9


def test_example_weights_count_like_repeated_examples() -> None:
    state = LearnerState.from_params(RankerParams())
    x = np.array([wide(1.0), wide(0.0, 1.0)])
    y = np.array([1.0, 0.0])
    weighted = update(state, x, y, LearnerConfig(max_gradient=100.0),
                      weights=np.array([3.0, 1.0]))
    repeated = update(state, np.array([x[0], x[0], x[0], x[1]]), np.array([1.0, 1, 1, 0]),
                      LearnerConfig(max_gradient=100.0))
    assert np.allclose(weighted.weights, repeated.weights)
    assert np.isclose(weighted.bias, repeated.bias)


def test_features_are_the_rankers_parts_before_weighting() -> None:
    from app.core.learning import features_of
    from app.core.ranking import Candidates, score

    vectors = np.eye(3, dtype=np.float32)
    candidates = Candidates(item_ids=["a", "b", "c"], vectors=vectors,
                            covisit=np.array([2.0, 1.0, 0.0], dtype=np.float32),
                            covisit_source=["x", "x", None],
                            popularity=np.array([0.0, 4.0, 2.0], dtype=np.float32),
                            freshness=np.array([1.0, 0.5, 0.0], dtype=np.float32),
                            covisit_lift=np.array([0.5, 2.0, 0.0], dtype=np.float32),
                            sequence=np.array([3.0, -1.0, 0.0], dtype=np.float32))
    params = RankerParams(semantic=2.0, covisit=3.0, popularity=0.5, freshness=0.1,
                          covisit_lift=1.5, sequence=0.5)
    scored = score(vectors[0], candidates, params)
    rows = features_of(scored, [0, 1])
    log = [np.log1p(np.float32(v)) for v in (0.0, 4.0)]     # log popularity
    # the lift is scaled to the list's maximum, like the co-visitation sum; the behaviour
    # model's log-lift is read as it is
    # (the trending feature is 0 for a user who is here: their presence is 1)
    assert np.allclose(rows, [[1.0, 1.0, 0.0, 1.0, 1.0, 0, 0, 0, 0, 0, log[0], 0.25, 3.0, 0],
                              [0.0, 0.5, 1.0, 0.5, 0.0, 0, 0, 0, 0, 0, log[1], 1.0, -1.0, 0]])
    weights = np.array([getattr(params, name) for name in FEATURES])
    assert np.allclose(rows @ weights, scored.total[[0, 1]])
    # a user away long enough to be half present: what their history says (the semantic,
    # co-visitation, lift and behaviour features) counts half, what is trending (scaled to
    # the list's maximum) by their absence, the half left
    away = replace(candidates, trending=np.array([1.0, 4.0, 0.0], dtype=np.float32),
                   presence=0.5)
    scored_away = score(vectors[0], away, params)
    rows_away = features_of(scored_away, [0, 1])
    assert np.allclose(rows_away, [
        [0.5, 0.5, 0.0, 1.0, 1.0, 0, 0, 0, 0, 0, log[0], 0.125, 1.5, 0.125],
        [0.0, 0.25, 1.0, 0.5, 0.0, 0, 0, 0, 0, 0, log[1], 0.5, -0.5, 0.5]])
    assert np.allclose(rows_away @ weights, scored_away.total[[0, 1]])


def test_preferences_from_next_items_recover_the_ranking_that_chose_them() -> None:
    """A synthetic stream with a known answer: each 'user' picks one of 50 candidates with
    probability softmax(truth . features); the learner sees only which one, as preferences
    over 10 others (app.core.learning.preferences)."""
    from app.core.learning import preferences

    rng = np.random.default_rng(1)
    truth = wide(0.0, 2.0, 0.0, 0.0, 0.0, 1.5, 0.5)
    truth[FEATURES.index("log_popularity")] = -1.0            # a discount, learnt as such
    truth[FEATURES.index("sequence")] = 1.0                   # above its prior of 0.3
    state = LearnerState.from_params(RankerParams())
    for n in range(3000):
        x = rng.uniform(size=(50, F))
        p = np.exp(x @ truth)
        chosen = int(rng.choice(50, p=p / p.sum()))
        pairs, labels = preferences(x, chosen, 10, seed=n)
        assert pairs.shape == (20, F)
        assert labels.sum() == 10
        state = update(state, pairs, labels)
    cosine = float(state.weights @ truth / np.linalg.norm(state.weights)
                   / np.linalg.norm(truth))
    assert cosine > 0.9, (state.weights, cosine)
    assert state.weights[FEATURES.index("log_popularity")] < -0.3
    assert state.weights[FEATURES.index("sequence")] > 0.6
    assert abs(state.bias) < 0.1        # each pair comes with its negation
    x = np.random.default_rng(2).uniform(size=(200, F))
    learnt, best = np.argsort(-(x @ state.weights)), np.argsort(-(x @ truth))
    assert len(set(learnt[:20]) & set(best[:20])) >= 14
