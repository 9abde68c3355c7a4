"""Fine-tuning the semantic score on behaviour (pure functions over numpy arrays).

The design scores s = cos(W1 u + b1, W2 r + b2). With W2 = I, b = 0 and W1 = M^T this ranks
items for a user exactly as the bilinear form u^T M r (the cosine's per-user normalisation
does not reorder one user's items), and the catalogue index stays valid: the encoder's
candidates are the items nearest W1 u. :func:`fit` learns M from logged behaviour: pairs of
(the user's interest vector just before an event, the item of that event), by a full
softmax over the catalogue (every item a negative, no sampling bias), mini-batch gradient
descent from the identity (the untuned model), L2 towards the identity.

:func:`online_step` is the same fit one mini-batch at a time, for the trainer while the
system runs: the pairs come from users' next items (app.core.serving), the softmax runs
over the targets and a uniform sample of the catalogue (all of it when small), the step is
clipped to a maximum norm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TuneConfig:
    epochs: int = 10
    learning_rate: float = 0.1
    temperature: float = 0.1      # logits are cosines / temperature
    batch: int = 512
    l2: float = 0.0               # pull towards the identity
    seed: int = 0


def _softmax_step(m: FloatArray, users: FloatArray, targets: IntArray, items: FloatArray,
                  config: TuneConfig) -> tuple[FloatArray, float]:
    """The gradient of the mean cross-entropy at ``m`` for one batch, and that loss."""
    scale = 1.0 / config.temperature
    logits = scale * ((users @ m) @ items.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(targets))
    loss = float(-np.log(p[rows, targets] + 1e-12).mean())
    p[rows, targets] -= 1.0
    gradient = scale * (users.T @ (p @ items)) / len(targets)
    identity = np.eye(m.shape[0], dtype=np.float32)
    return (gradient + config.l2 * (m - identity)).astype(np.float32), loss


def loss(m: FloatArray, users: FloatArray, targets: IntArray, items: FloatArray,
         config: TuneConfig = TuneConfig()) -> float:
    """Mean cross-entropy of ``targets`` given ``users`` (in batches)."""
    total = 0.0
    for start in range(0, len(targets), config.batch):
        part = slice(start, start + config.batch)
        total += _softmax_step(m, users[part], targets[part], items, config)[1] * len(
            targets[part])
    return total / max(1, len(targets))


def fit(users: FloatArray, targets: IntArray, items: FloatArray,
        config: TuneConfig = TuneConfig(),
        progress: Callable[[int, float], None] = lambda epoch, loss: None) -> FloatArray:
    """M ([d, d]) such that softmax over ``items`` ([n_items, d], unit rows) of
    ``users @ M @ items.T`` puts mass on ``targets`` (row indices into ``items``)."""
    dimension = items.shape[1]
    m = np.eye(dimension, dtype=np.float32)
    rng = np.random.default_rng(config.seed)
    for epoch in range(config.epochs):
        order = rng.permutation(len(targets))
        total = 0.0
        for start in range(0, len(order), config.batch):
            batch = order[start:start + config.batch]
            gradient, batch_loss = _softmax_step(m, users[batch], targets[batch], items,
                                                 config)
            m -= config.learning_rate * gradient
            total += batch_loss * len(batch)
        progress(epoch + 1, total / max(1, len(order)))
    return m


@dataclass(frozen=True)
class OnlineConfig:
    learning_rate: float = 0.05
    temperature: float = 0.1
    max_gradient: float = 1.0     # the step's norm is at most learning_rate * this
    l2: float = 1e-3              # pull towards the identity
    negatives: int = 4_096        # catalogue rows the softmax runs over (all when fewer)


def online_step(m: FloatArray, users: FloatArray, targets: IntArray, items: FloatArray,
                config: OnlineConfig = OnlineConfig()) -> tuple[FloatArray, float]:
    """M after one clipped gradient step on a mini-batch (``users`` [b, d], ``targets`` rows
    of ``items``: the catalogue or a sample of it holding the targets), and the batch's loss
    before the step."""
    if len(targets) == 0:
        return m, 0.0
    gradient, batch_loss = _softmax_step(
        m, users, targets, items, TuneConfig(temperature=config.temperature, l2=config.l2))
    norm = float(np.linalg.norm(gradient))
    if norm > config.max_gradient:
        gradient *= config.max_gradient / norm
    return (m - config.learning_rate * gradient).astype(np.float32), batch_loss


def as_projection(m: FloatArray) -> FloatArray:
    """W1 for s = cos(W1 u, r): M transposed."""
    return np.ascontiguousarray(m.T, dtype=np.float32)
