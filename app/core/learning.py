"""Online learning of the ranker's weights from rewards (pure functions over numpy).

The ranker scores a candidate as ``sum_i w_i * part_i`` (parts: semantic, co-visitation,
popularity, freshness, novelty; app.core.ranking). Feedback says which shown item was
preferred to the others; attribution (app.core.attribution) turns that into examples whose
features are differences of parts, so ``sigmoid(w . x + b)`` fitted here is the probability
of a preference (the bias stays near zero: each pair comes with its negation). Fitted by
stochastic gradient steps on the weighted log loss, with

- a learning rate that decays as ``lr / sqrt(1 + steps / decay_steps)``,
- the gradient clipped to a maximum norm (one odd batch cannot swing the ranker),
- L2 pulling the weights back towards the prior (the documented defaults) rather than
  towards zero, so sparse feedback leaves the ranker near what was measured offline,
- weights kept non-negative (each part is a "more is better" signal by construction).

Ranking depends on the weights only up to a positive scale and not on the bias, so the
learnt weights become the next :class:`RankerParams` as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from app.core.ranking import FEATURES, RankerParams, Scored

FloatArray = npt.NDArray[np.float64]
__all__ = ["FEATURES", "LearnerConfig", "LearnerState", "click_probability", "features_of",
           "learning_rate", "update"]


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


def features_of(scored: Scored, rows: Sequence[int]) -> FloatArray:
    """The unweighted ranker features of candidates ``rows`` ([len(rows), len(FEATURES)])."""
    index = np.asarray(rows, dtype=np.intp)
    return np.stack([scored.features[name][index] for name in FEATURES],
                    axis=1).astype(np.float64)


def click_probability(state: LearnerState, features: FloatArray) -> FloatArray:
    """P(click) for each row of ``features`` ([n, len(FEATURES)])."""
    logits = features @ state.weights + state.bias
    probability: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(logits, -30.0, 30.0)))
    return probability


def learning_rate(config: LearnerConfig, steps: int) -> float:
    return config.learning_rate / float(np.sqrt(1.0 + steps / config.decay_steps))


def update(state: LearnerState, features: FloatArray, rewards: FloatArray,
           config: LearnerConfig = LearnerConfig(), weights: FloatArray | None = None
           ) -> LearnerState:
    """One gradient step on a mini-batch: ``features`` [n, len(FEATURES)], ``rewards`` [n]
    in {0, 1} (or a conversion weight in [0, 1]), each example counted by ``weights`` [n]
    (a purchase more than a click; all 1 when None)."""
    if len(rewards) == 0:
        return state
    counts = np.ones(len(rewards)) if weights is None else weights
    error = (click_probability(state, features) - rewards) * counts  # d(log loss)/d(logit)
    gradient = np.append(features.T @ error / counts.sum()
                         + config.l2 * (state.weights - state.prior),
                         error.sum() / counts.sum())
    norm = float(np.linalg.norm(gradient))
    if norm > config.max_gradient:
        gradient *= config.max_gradient / norm
    rate = learning_rate(config, state.steps)
    weights = np.maximum(state.weights - rate * gradient[:-1], 0.0)
    return replace(state, weights=weights, bias=state.bias - rate * float(gradient[-1]),
                   steps=state.steps + 1, seen=state.seen + len(rewards))
