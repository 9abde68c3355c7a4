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
- weights kept non-negative (each part is a "more is better" signal by construction),
  except the ``SIGNED`` features (log popularity: a discount is learnt as a negative weight).

The examples come from two places, both preferences (features of the preferred item minus
another's, labelled 1, and the negation labelled 0):

- feedback on published lists (app.core.attribution): the item acted on against the rest of
  the shown list;
- behaviour (:func:`preferences`): the item a user touched next against a sample of the
  candidates the ranker had for them just before (their state before the event), the
  ranker's own training signal without anyone clicking a recommendation. The negatives are
  drawn uniformly from the candidates, not from the top: the highest-scored ones teach the
  learner to reverse its ranking (measured in the MovieLens-1M stand-in: NDCG@10 0.124
  with the 20 highest-scored negatives, 0.157 with 20 uniform ones, 0.135 learning nothing).
  A listwise softmax over every candidate and LambdaRank-weighted pairs did no better
  against the tuned defaults (docs/feedback.md, "Other objectives").

Ranking depends on the weights only up to a positive scale and not on the bias, so the
learnt weights become the next :class:`RankerParams` as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from app.core.ranking import FEATURES, SIGNED, RankerParams, Scored

FloatArray = npt.NDArray[np.float64]
__all__ = ["FEATURES", "LearnerConfig", "LearnerState", "click_probability", "features_of",
           "learning_rate", "preferences", "update"]
_UNSIGNED = np.array([name not in SIGNED for name in FEATURES])


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
    usable = np.isfinite(features).all(axis=1) & np.isfinite(rewards)
    if not usable.all():   # a broken example must not poison every weight
        features, rewards = features[usable], rewards[usable]
        weights = weights[usable] if weights is not None else None
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
    stepped = state.weights - rate * gradient[:-1]
    weights = np.where(_UNSIGNED, np.maximum(stepped, 0.0), stepped)
    return replace(state, weights=weights, bias=state.bias - rate * float(gradient[-1]),
                   steps=state.steps + 1, seen=state.seen + len(rewards))


def preferences(features: FloatArray, chosen: int, negatives: int, seed: int
                ) -> tuple[FloatArray, FloatArray]:
    """Pairwise examples saying candidate ``chosen`` (a row of ``features``, [n, F]) was
    preferred to ``negatives`` others drawn uniformly (seeded): the differences labelled 1
    and their negations labelled 0 ([2m, F] and [2m])."""
    others = np.delete(np.arange(len(features)), chosen)
    if not len(others) or negatives <= 0:
        return np.zeros((0, features.shape[1])), np.zeros(0)
    rng = np.random.default_rng(seed)
    drawn = rng.choice(others, size=min(negatives, len(others)), replace=False)
    difference = features[chosen] - features[drawn]
    return (np.concatenate([difference, -difference]),
            np.concatenate([np.ones(len(drawn)), np.zeros(len(drawn))]))
