"""Online learning of the ranker's weights from rewards (pure functions over numpy).

The ranker scores a candidate as ``sum_i w_i * part_i`` (parts: semantic, co-visitation,
popularity, freshness, novelty; app.core.ranking). Feedback says which shown items were
clicked (or bought) and which were only seen. The learner fits the click probability
``sigmoid(w . parts + b)`` by stochastic gradient steps on the log loss, with

- a learning rate that decays as ``lr / sqrt(1 + steps / decay_steps)``,
- the gradient clipped to a maximum norm (one odd batch cannot swing the ranker),
- L2 pulling the weights back towards the prior (the documented defaults) rather than
  towards zero, so sparse feedback leaves the ranker near what was measured offline,
- weights kept non-negative (each part is a "more is better" signal by construction).

Ranking depends on the weights only up to a positive scale and not on the bias, so the
learnt weights become the next :class:`RankerParams` as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from app.core.ranking import RankerParams, Scored

FloatArray = npt.NDArray[np.float64]
FEATURES = ("semantic", "covisit", "popularity", "freshness", "novelty")


@dataclass(frozen=True)
class LearnerConfig:
    learning_rate: float = 0.5
    decay_steps: float = 1_000.0
    l2: float = 1e-3        # strength of the pull towards the prior weights
    max_gradient: float = 1.0


@dataclass(frozen=True)
class LearnerState:
    weights: FloatArray      # aligned with FEATURES
    prior: FloatArray
    bias: float = 0.0
    steps: int = 0
    seen: int = 0            # rewards learnt from

    @classmethod
    def from_params(cls, params: RankerParams) -> LearnerState:
        weights = np.array([getattr(params, name) for name in FEATURES], dtype=np.float64)
        return cls(weights=weights, prior=weights.copy())


def features_of(scored: Scored, row: int) -> FloatArray:
    """One candidate's unweighted ranker features, in FEATURES order."""
    return np.array([float(scored.features[name][row]) for name in FEATURES],
                    dtype=np.float64)


def click_probability(state: LearnerState, features: FloatArray) -> FloatArray:
    """P(click) for each row of ``features`` ([n, len(FEATURES)])."""
    logits = features @ state.weights + state.bias
    probability: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(logits, -30.0, 30.0)))
    return probability


def learning_rate(config: LearnerConfig, steps: int) -> float:
    return config.learning_rate / float(np.sqrt(1.0 + steps / config.decay_steps))


def update(state: LearnerState, features: FloatArray, rewards: FloatArray,
           config: LearnerConfig = LearnerConfig()) -> LearnerState:
    """One gradient step on a mini-batch: ``features`` [n, len(FEATURES)], ``rewards`` [n]
    in {0, 1} (or a conversion weight in [0, 1])."""
    if len(rewards) == 0:
        return state
    error = click_probability(state, features) - rewards          # d(log loss)/d(logit)
    gradient = np.append(features.T @ error / len(rewards)
                         + config.l2 * (state.weights - state.prior), error.mean())
    norm = float(np.linalg.norm(gradient))
    if norm > config.max_gradient:
        gradient *= config.max_gradient / norm
    rate = learning_rate(config, state.steps)
    weights = np.maximum(state.weights - rate * gradient[:-1], 0.0)
    return replace(state, weights=weights, bias=state.bias - rate * float(gradient[-1]),
                   steps=state.steps + 1, seen=state.seen + len(rewards))


def to_params(state: LearnerState, base: RankerParams, version: str) -> RankerParams:
    """The ranker parameters these weights stand for (everything else from ``base``)."""
    semantic, covisit, popularity, freshness, novelty = (float(w) for w in state.weights)
    return replace(base, version=version, semantic=semantic, covisit=covisit,
                   popularity=popularity, freshness=freshness, novelty=novelty)
