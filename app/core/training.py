"""The trainer: rewards in, parameter versions out (pure functions over plain data).

Workers send the trainer :class:`Batch` records on the one-partition ``examples`` topic:
the events agent how many items each model version showed, the feedback agent the learning
examples attributed feedback produced (app.core.attribution) and the clicks by version. One
trainer (the worker that owns the topic's partition) folds them with :func:`step`:

1. shown and clicks are added to their generation's :class:`Traffic` (app.core.versions);
2. examples update the learner (app.core.learning) and become the new head version;
   pairs of (a user's interest just before an event, its item) update the projection W1
   (app.core.tuning.online_step), published at most every ``projection_every_ms`` as
   ``projection:online-<g>.<s>`` and named by the head from then on;
3. a generation that has shown ``min_impressions`` items closes: its head is kept as a
   checkpoint, and its parent generation is judged against the grandparent; significantly
   fewer clicks and the head goes back to the grandparent's checkpoint (a new generation
   starts from it, the descendants of the bad one are dropped).

A head published by someone else (a rollback by command, a tuned projection from
`streamrec tune`) is adopted: the trainer trains on from it, its projection included. A
projection the trainer published is deleted (a tombstone) once neither the head nor a kept
checkpoint names it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt
from msgspec import Struct

from app.core.learning import FEATURES, LearnerConfig, LearnerState, update
from app.core.tuning import OnlineConfig, as_projection, online_step
from app.core.versions import (
    CONTROL,
    HEAD,
    ModelVersion,
    Traffic,
    Verdict,
    checkpoint_key,
    compare,
    compare_with_control,
    encode_projection,
    encode_version,
    generation_of,
    learner_of,
    projection_key,
    version_name,
)

Matrix = npt.NDArray[np.float32]
ONLINE = "online-"                # prefix of the projections the trainer publishes


class SoftmaxSet(Protocol):
    """What the projection learns against: the catalogue (app.core.catalogue.VectorIndex)."""

    def softmax_set(self, targets: Iterable[str], negatives: int, seed: int
                    ) -> tuple[Matrix, npt.NDArray[np.int64], npt.NDArray[np.bool_]]: ...


class Batch(Struct, frozen=True, kw_only=True):
    """One record of the ``examples`` topic."""

    features: list[tuple[float, ...]] = []
    rewards: list[float] = []
    weights: list[float] = []
    shown: dict[str, int] = {}        # items shown, by learnt version (and ``CONTROL``)
    clicks: dict[str, int] = {}       # clicks attributed, by learnt version (and ``CONTROL``)
    produced_at: int = 0              # ms: newest feedback behind the examples
    queries: list[bytes] = []         # float16 unit interest of a user just before an event
    targets: list[str] = []           # the item of that event (aligned with ``queries``)


def _widened(features: tuple[float, ...]) -> tuple[float, ...]:
    """An example as wide as FEATURES: one from a worker that predates a feature (a rolling
    upgrade) says nothing of it (a difference of 0)."""
    width = len(FEATURES)
    return features[:width] + (0.0,) * (width - len(features))


def merge(batches: list[Batch]) -> Batch:
    """Many records of the topic as one mini-batch (counts summed, examples joined and
    widened to FEATURES)."""
    shown: dict[str, int] = {}
    clicks: dict[str, int] = {}
    for batch in batches:
        for target, counts in ((shown, batch.shown), (clicks, batch.clicks)):
            for version, n in counts.items():
                target[version] = target.get(version, 0) + n
    return Batch(features=[_widened(f) for b in batches for f in b.features],
                 rewards=[r for b in batches for r in b.rewards],
                 weights=[w for b in batches for w in b.weights],
                 shown=shown, clicks=clicks,
                 produced_at=max((b.produced_at for b in batches), default=0),
                 queries=[q for b in batches for q in b.queries],
                 targets=[t for b in batches for t in b.targets])


@dataclass(frozen=True)
class TrainerConfig:
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    min_impressions: int = 2_000      # items shown that close a generation
    z_critical: float = 2.33
    keep: int = 5                     # checkpoints kept
    projection: OnlineConfig | None = None    # None: W1 is not learnt online
    projection_every_ms: int = 5_000  # newest projection published at most this often


@dataclass(frozen=True)
class Trainer:
    config: TrainerConfig
    learner: LearnerState
    head: ModelVersion
    generation: int                   # the one being trained
    step: int = 0
    parent: dict[int, int] = field(default_factory=dict)      # generation -> its parent
    traffic: dict[int, Traffic] = field(default_factory=dict)
    control: dict[int, Traffic] = field(default_factory=dict)   # during each generation
    checkpoints: dict[int, ModelVersion] = field(default_factory=dict)
    adopted_at: int = 0               # published_at of the last head adopted from outside
    m: Matrix | None = None           # the projection being learnt (W1 = M^T; None: I)
    m_changed: bool = False           # learnt since it was last published
    m_published_at: int | None = None   # ms (None: not yet)
    m_steps: int = 0
    m_pairs: int = 0                  # pairs learnt from
    m_loss: float = 0.0               # the last step's loss (before the step)
    projections: dict[str, Matrix] = field(default_factory=dict)   # W1 by name (known)


Publication = tuple[bytes, bytes | None]


def _version(learner: LearnerState, generation: int, step: int, now: int, reward_at: int,
             projection: str, origin: str = "trainer", note: str = "") -> ModelVersion:
    return ModelVersion(version=version_name(generation, step), generation=generation,
                        weights=tuple(float(w) for w in learner.weights), bias=learner.bias,
                        steps=learner.steps, seen=learner.seen, published_at=now,
                        reward_at=reward_at, origin=origin, note=note, projection=projection)


def _m_of(projection: str, projections: Mapping[str, Matrix]) -> Matrix | None:
    """The M behind a named projection (W1 = M^T); None for the identity or one unknown."""
    w1 = projections.get(projection) if projection else None
    return None if w1 is None else np.ascontiguousarray(w1.T, dtype=np.float32)


def start(config: TrainerConfig, prior: LearnerState, head: ModelVersion | None,
          checkpoints: dict[int, ModelVersion], now: int,
          projections: Mapping[str, Matrix] | None = None) -> Trainer:
    """A trainer resuming from the topic's head, checkpoints and projections (or from the
    prior)."""
    known = dict(projections or {})
    learner = prior if head is None else learner_of(head, prior)
    if head is None:
        head = ModelVersion(version=version_name(0, 0), generation=0,
                            weights=tuple(float(w) for w in prior.weights), published_at=now)
    generation = max([head.generation, *checkpoints]) + 1
    return Trainer(config, learner, head, generation, parent={generation: head.generation},
                   checkpoints=dict(checkpoints), adopted_at=head.published_at,
                   m=_m_of(head.projection, known), projections=known)


def adopt(trainer: Trainer, head: ModelVersion,
          projections: Mapping[str, Matrix] | None = None) -> Trainer:
    """Follow a head published by someone else (a rollback by command, a tuned projection):
    train on from it, its projection included, in a new generation whose parent is the
    head's."""
    generation = trainer.generation + 1
    known = {**trainer.projections, **(projections or {})}
    return replace(trainer, learner=learner_of(head, trainer.learner), head=head,
                   generation=generation, step=0,
                   parent={**trainer.parent, generation: head.generation},
                   adopted_at=head.published_at, m=_m_of(head.projection, known),
                   m_changed=False, projections=known)


def _count(trainer: Trainer, batch: Batch) -> Trainer:
    """Learnt versions' traffic goes to their generation, the control's to the generation
    being trained while it arrives (the period it was served in)."""
    traffic, control = dict(trainer.traffic), dict(trainer.control)
    for counts, clicks in ((batch.shown, False), (batch.clicks, True)):
        for version, n in counts.items():
            add = Traffic(0, n) if clicks else Traffic(n, 0)
            if version == CONTROL:
                now = trainer.generation
                control[now] = control.get(now, Traffic()) + add
                continue
            generation = generation_of(version)
            if generation is not None:
                traffic[generation] = traffic.get(generation, Traffic()) + add
    return replace(trainer, traffic=traffic, control=control)


def judge(trainer: Trainer, new: int, old: int) -> Verdict:
    """Generation ``new`` against ``old``: relative to the control when both had one."""
    config = trainer.config
    traffic = (trainer.traffic.get(new, Traffic()), trainer.traffic.get(old, Traffic()))
    if new in trainer.control and old in trainer.control:
        return compare_with_control(traffic[0], trainer.control[new], traffic[1],
                                    trainer.control[old], config.z_critical,
                                    config.min_impressions)
    return compare(*traffic, config.z_critical, config.min_impressions)


def learn_projection(trainer: Trainer, batch: Batch, catalogue: SoftmaxSet) -> Trainer:
    """One step of the projection on the batch's (interest, item) pairs: a softmax over the
    targets and a sample of the catalogue (app.core.tuning.online_step). Pairs whose item
    is not in the catalogue, or whose vector is not the catalogue's width, are left out."""
    config = trainer.config.projection
    if config is None or not batch.queries:
        return trainer
    pairs = [(np.frombuffer(q, dtype="<f2"), t)
             for q, t in zip(batch.queries, batch.targets, strict=False)]
    items, rows, known = catalogue.softmax_set([t for _, t in pairs], config.negatives,
                                               seed=trainer.m_steps)
    width = items.shape[1]
    fits = np.array([len(q) == width for q, _ in pairs], dtype=bool)
    keep = fits[known]
    users = np.array([q for (q, _), k in zip(pairs, known & fits, strict=True) if k],
                     dtype=np.float32).reshape(-1, width)
    if not len(users):
        return trainer
    m = trainer.m if trainer.m is not None and trainer.m.shape == (width, width) else np.eye(
        width, dtype=np.float32)
    m, loss = online_step(m, users, rows[keep], items, config)
    return replace(trainer, m=m, m_changed=True, m_steps=trainer.m_steps + 1,
                   m_pairs=trainer.m_pairs + len(users), m_loss=loss)


def step(trainer: Trainer, batch: Batch, now: int, catalogue: SoftmaxSet | None = None
         ) -> tuple[Trainer, list[Publication], Verdict | None]:
    """Fold one batch: the new trainer, the records to publish on the ``models`` topic, and
    the verdict when a generation was judged. ``catalogue``: what the projection learns
    against (without it, the batch's pairs are left out)."""
    trainer = _count(trainer, batch)
    if catalogue is not None:
        trainer = learn_projection(trainer, batch, catalogue)
    out: list[Publication] = []
    learner = trainer.learner
    if batch.rewards:
        learner = update(learner, np.array(batch.features, dtype=np.float64),
                         np.array(batch.rewards, dtype=np.float64), trainer.config.learner,
                         weights=np.array(batch.weights, dtype=np.float64))
    last = trainer.m_published_at
    publish = (trainer.m_changed and trainer.m is not None
               and (last is None or now - last >= trainer.config.projection_every_ms))
    if batch.rewards or publish:
        projection = trainer.head.projection
        if publish and trainer.m is not None:
            projection = f"{ONLINE}{trainer.generation}.{trainer.step + 1}"
            w1 = as_projection(trainer.m)
            out.append((projection_key(projection), encode_projection(w1)))
            trainer = replace(trainer, m_changed=False, m_published_at=now,
                              projections={**trainer.projections, projection: w1})
        head = _version(learner, trainer.generation, trainer.step + 1, now,
                        batch.produced_at, projection)
        trainer = replace(trainer, learner=learner, head=head, step=trainer.step + 1)
        out.append((HEAD, encode_version(head)))
    shown = trainer.traffic.get(trainer.generation, Traffic()).impressions
    if shown < trainer.config.min_impressions or trainer.step == 0:
        return _forget_projections(trainer, out), out, None
    trainer, out, verdict = _close(trainer, out, now)
    return _forget_projections(trainer, out), out, verdict


def _forget_projections(trainer: Trainer, out: list[Publication]) -> Trainer:
    """Tombstones for the trainer's own projections that neither the head nor a kept
    checkpoint names any more (added to ``out``)."""
    named = {trainer.head.projection, *(c.projection for c in trainer.checkpoints.values())}
    stale = [name for name in trainer.projections
             if name.startswith(ONLINE) and name not in named]
    if not stale:
        return trainer
    for name in stale:
        out.append((projection_key(name), None))
    return replace(trainer, projections={name: w for name, w in trainer.projections.items()
                                         if name not in stale})


def _close(trainer: Trainer, out: list[Publication], now: int
           ) -> tuple[Trainer, list[Publication], Verdict | None]:
    """Close the current generation: keep its checkpoint, judge its parent."""
    closing = trainer.generation
    checkpoints = {**trainer.checkpoints, closing: trainer.head}
    out.append((checkpoint_key(closing), encode_version(trainer.head)))
    judged = trainer.parent.get(closing)
    grandparent = trainer.parent.get(judged) if judged is not None else None
    verdict = None
    if judged is not None and grandparent is not None and grandparent in checkpoints:
        verdict = judge(trainer, judged, grandparent)
    generation = closing + 1
    if verdict is not None and verdict.roll_back and grandparent is not None:
        restored = checkpoints[grandparent]
        for bad in (judged, closing):
            if bad is not None and bad in checkpoints:
                del checkpoints[bad]
                out.append((checkpoint_key(bad), None))
        learner = learner_of(restored, trainer.learner)
        head = _version(learner, generation, 0, now, restored.reward_at,
                        restored.projection, origin="rollback",
                        note=f"generation {judged} rolled back to {restored.version}: "
                             f"{verdict.reason}")
        out.append((HEAD, encode_version(head)))
        parent = grandparent
        m = _m_of(restored.projection, trainer.projections)
    else:
        learner, head, parent, m = trainer.learner, trainer.head, closing, trainer.m
    for old in sorted(checkpoints)[:-trainer.config.keep]:
        del checkpoints[old]
        out.append((checkpoint_key(old), None))
    return (replace(trainer, learner=learner, head=head, generation=generation, step=0,
                    parent={**trainer.parent, generation: parent}, checkpoints=checkpoints,
                    m=m, m_changed=trainer.m_changed and m is trainer.m),
            out, verdict)
