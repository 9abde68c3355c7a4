"""The trainer: rewards in, parameter versions out (pure functions over plain data).

Workers send the trainer :class:`Batch` records on the one-partition ``examples`` topic:
the events agent how many items each model version showed, the feedback agent the learning
examples attributed feedback produced (app.core.attribution) and the clicks by version. One
trainer (the worker that owns the topic's partition) folds them with :func:`step`:

1. shown and clicks are added to their generation's :class:`Traffic` (app.core.versions);
2. examples update the learner (app.core.learning) and become the new head version;
3. a generation that has shown ``min_impressions`` items closes: its head is kept as a
   checkpoint, and its parent generation is judged against the grandparent; significantly
   fewer clicks and the head goes back to the grandparent's checkpoint (a new generation
   starts from it, the descendants of the bad one are dropped).

A head published by someone else (a rollback by command, a tuned projection from
`streamrec tune`) is adopted: the trainer trains on from it, keeping its projection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from msgspec import Struct

from app.core.learning import FEATURES, LearnerConfig, LearnerState, update
from app.core.versions import (
    CONTROL,
    HEAD,
    ModelVersion,
    Traffic,
    Verdict,
    checkpoint_key,
    compare,
    compare_with_control,
    encode_version,
    generation_of,
    learner_of,
    version_name,
)


class Batch(Struct, frozen=True, kw_only=True):
    """One record of the ``examples`` topic."""

    features: list[tuple[float, ...]] = []
    rewards: list[float] = []
    weights: list[float] = []
    shown: dict[str, int] = {}        # items shown, by learnt version (and ``CONTROL``)
    clicks: dict[str, int] = {}       # clicks attributed, by learnt version (and ``CONTROL``)
    produced_at: int = 0              # ms: newest feedback behind the examples


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
                 produced_at=max((b.produced_at for b in batches), default=0))


@dataclass(frozen=True)
class TrainerConfig:
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    min_impressions: int = 2_000      # items shown that close a generation
    z_critical: float = 2.33
    keep: int = 5                     # checkpoints kept


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


Publication = tuple[bytes, bytes | None]


def _version(learner: LearnerState, generation: int, step: int, now: int, reward_at: int,
             projection: str, origin: str = "trainer", note: str = "") -> ModelVersion:
    return ModelVersion(version=version_name(generation, step), generation=generation,
                        weights=tuple(float(w) for w in learner.weights), bias=learner.bias,
                        steps=learner.steps, seen=learner.seen, published_at=now,
                        reward_at=reward_at, origin=origin, note=note, projection=projection)


def start(config: TrainerConfig, prior: LearnerState, head: ModelVersion | None,
          checkpoints: dict[int, ModelVersion], now: int) -> Trainer:
    """A trainer resuming from the topic's head and checkpoints (or from the prior)."""
    learner = prior if head is None else learner_of(head, prior)
    if head is None:
        head = ModelVersion(version=version_name(0, 0), generation=0,
                            weights=tuple(float(w) for w in prior.weights), published_at=now)
    generation = max([head.generation, *checkpoints]) + 1
    return Trainer(config, learner, head, generation, parent={generation: head.generation},
                   checkpoints=dict(checkpoints), adopted_at=head.published_at)


def adopt(trainer: Trainer, head: ModelVersion) -> Trainer:
    """Follow a head published by someone else (a rollback by command, a tuned projection):
    train on from it, in a new generation whose parent is the head's."""
    generation = trainer.generation + 1
    return replace(trainer, learner=learner_of(head, trainer.learner), head=head,
                   generation=generation, step=0,
                   parent={**trainer.parent, generation: head.generation},
                   adopted_at=head.published_at)


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


def step(trainer: Trainer, batch: Batch, now: int
         ) -> tuple[Trainer, list[Publication], Verdict | None]:
    """Fold one batch: the new trainer, the records to publish on the ``models`` topic, and
    the verdict when a generation was judged."""
    trainer = _count(trainer, batch)
    out: list[Publication] = []
    if batch.rewards:
        learner = update(trainer.learner, np.array(batch.features, dtype=np.float64),
                         np.array(batch.rewards, dtype=np.float64), trainer.config.learner,
                         weights=np.array(batch.weights, dtype=np.float64))
        head = _version(learner, trainer.generation, trainer.step + 1, now,
                        batch.produced_at, trainer.head.projection)
        trainer = replace(trainer, learner=learner, head=head, step=trainer.step + 1)
        out.append((HEAD, encode_version(head)))
    shown = trainer.traffic.get(trainer.generation, Traffic()).impressions
    if shown < trainer.config.min_impressions or trainer.step == 0:
        return trainer, out, None
    return _close(trainer, out, now)


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
    else:
        learner, head, parent = trainer.learner, trainer.head, closing
    for old in sorted(checkpoints)[:-trainer.config.keep]:
        del checkpoints[old]
        out.append((checkpoint_key(old), None))
    return (replace(trainer, learner=learner, head=head, generation=generation, step=0,
                    parent={**trainer.parent, generation: parent}, checkpoints=checkpoints),
            out, verdict)
