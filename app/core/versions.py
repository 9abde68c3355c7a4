"""Versioned ranker parameters: what a version holds, which one serves, when to roll back
(pure functions and plain data).

The learner publishes a new version after every mini-batch of rewards (``learning-<g>.<n>``).
Versions come in *generations*: a generation ends once its lists have been shown
``min_impressions`` times, and its last version is kept as a *checkpoint* (the newest ``keep``
are kept). Rollback judges generations, not single versions (one version serves for about a
second: far too few impressions to judge): when a generation's click-through is
significantly below its predecessor's (a one-sided two-proportion z-test, decided only with
enough impressions on both sides, so noise on a few hundred impressions cannot flip the
ranker back and forth), the head goes back to the predecessor's checkpoint. When the
experiment has a control (users served the defaults at the same time), each generation's
click-through is taken relative to the control's over the same period, so a drift of the
traffic itself is not read as a worse model (measured: ten rollbacks in one ML-1M replay
without it, as the stream's own click-through fell). A generation is judged one generation
late, so the clicks on its lists have had time to arrive (impressions are counted when a
list is published, clicks only when the user comes back). An operator can roll back by
command the same way (`streamrec model rollback`).

On the ``models`` topic (compacted) the key ``head`` holds the version the learning variant
serves and ``checkpoint:<g>`` the kept checkpoints; every worker follows the whole topic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import Struct

from app.core.learning import LearnerState
from app.core.ranking import FEATURES, RankerParams

HEAD = b"head"
CONTROL = "control"       # the key of the control variants' traffic in the trainer's counts
CHECKPOINT_PREFIX = b"checkpoint:"
PROJECTION_PREFIX = b"projection:"     # a tuned W1 (float16, row-major), by id
_VERSION = re.compile(r"^learning-(\d+)\.(\d+)$")


@dataclass(frozen=True)
class Traffic:
    impressions: int = 0
    clicks: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.impressions + other.impressions, self.clicks + other.clicks)


@dataclass(frozen=True)
class Verdict:
    roll_back: bool
    z: float            # negative: the new version clicks less
    reason: str


def compare(new: Traffic, old: Traffic, z_critical: float = 2.33,
            min_impressions: int = 1_000) -> Verdict:
    """Whether ``new`` clicks significantly less than ``old`` (one-sided; z 2.33 ~ 1%)."""
    if min(new.impressions, old.impressions) < min_impressions:
        return Verdict(False, 0.0, "not enough impressions yet")
    pooled = (new.clicks + old.clicks) / (new.impressions + old.impressions)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / new.impressions + 1 / old.impressions))
    if spread == 0:
        return Verdict(False, 0.0, "no variation in clicks")
    z = (new.ctr - old.ctr) / spread
    if z < -z_critical:
        return Verdict(True, z, f"click-through {new.ctr:.4f} vs {old.ctr:.4f}: z = {z:.2f}")
    return Verdict(False, z, "not significantly worse")


def compare_with_control(new: Traffic, new_control: Traffic, old: Traffic,
                         old_control: Traffic, z_critical: float = 2.33,
                         min_impressions: int = 1_000) -> Verdict:
    """Whether ``new`` clicks significantly less *relative to the control served at the
    same time* than ``old`` did relative to its control (one-sided z on the difference of
    the two click-through differences). Click-through drifts with the traffic itself (time
    of day, a catalogue change, a replay's later years): a raw comparison of consecutive
    generations reads that drift as a worse model; the concurrent control cancels it."""
    if min(new.impressions, new_control.impressions, old.impressions,
           old_control.impressions) < min_impressions:
        return Verdict(False, 0.0, "not enough impressions yet")
    lift_new, lift_old = new.ctr - new_control.ctr, old.ctr - old_control.ctr
    variance = sum(t.ctr * (1 - t.ctr) / t.impressions
                   for t in (new, new_control, old, old_control))
    if variance == 0:
        return Verdict(False, 0.0, "no variation in clicks")
    z = (lift_new - lift_old) / math.sqrt(variance)
    if z < -z_critical:
        return Verdict(True, z, f"click-through {new.ctr:.4f} vs control {new_control.ctr:.4f}"
                                f", was {old.ctr:.4f} vs {old_control.ctr:.4f}: z = {z:.2f}")
    return Verdict(False, z, "not significantly worse against the control")


class ModelVersion(Struct, frozen=True, kw_only=True):
    """One published parameter version: the ranker weights (``FEATURES`` order) and the
    learner's state behind them, so that a trainer can resume from any version."""

    version: str
    generation: int
    weights: tuple[float, ...]
    bias: float = 0.0
    steps: int = 0
    seen: int = 0                     # rewards learnt from, all versions before included
    published_at: int = 0             # ms
    reward_at: int = 0                # ms: when the newest reward behind it was produced
    origin: str = "trainer"           # trainer | rollback | command | tune
    note: str = ""
    projection: str = ""              # id of the tuned W1 it serves ("" : the identity)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(ModelVersion).decode


def encode_version(version: ModelVersion) -> bytes:
    return _encode(version)


def decode_version(value: bytes) -> ModelVersion:
    return _decode(value)


def encode_projection(w1: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(w1, dtype="<f2").tobytes()


def decode_projection(value: bytes) -> npt.NDArray[np.float32]:
    flat = np.frombuffer(value, dtype="<f2").astype(np.float32)
    dimension = math.isqrt(len(flat))
    if dimension * dimension != len(flat):
        raise ValueError(f"a projection of {len(flat)} values is not square")
    return flat.reshape(dimension, dimension)


def projection_key(projection: str) -> bytes:
    return PROJECTION_PREFIX + projection.encode()


def generation_of(version: str) -> int | None:
    """The generation of a learning version (``learning-3.41`` -> 3); None for others."""
    match = _VERSION.match(version)
    return int(match.group(1)) if match else None


def version_name(generation: int, step: int) -> str:
    return f"learning-{generation}.{step}"


def checkpoint_key(generation: int) -> bytes:
    return CHECKPOINT_PREFIX + str(generation).encode()


def weights_by_name(version: ModelVersion, base: RankerParams) -> dict[str, float]:
    """A version's weights by feature; a version from before a feature existed (a shorter
    tuple) leaves it at ``base``'s."""
    named = {name: float(getattr(base, name)) for name in FEATURES}
    named.update(zip(FEATURES, (float(w) for w in version.weights), strict=False))
    return named


def as_params(version: ModelVersion, base: RankerParams,
              w1: npt.NDArray[np.float32] | None = None) -> RankerParams:
    """The ranker parameters a version stands for (everything it does not learn from
    ``base``); ``w1`` is its tuned projection, when it has one."""
    params = replace(base, version=version.version, w1=w1 if w1 is not None else base.w1)
    named: dict[str, Any] = weights_by_name(version, base)
    return replace(params, **named)


def learner_of(version: ModelVersion, prior: LearnerState) -> LearnerState:
    """The learner state saved in a version (the prior stays the documented defaults; a
    feature the version predates starts at its prior)."""
    weights = prior.prior.copy()
    weights[:len(version.weights)] = version.weights[:len(weights)]
    return replace(prior, weights=weights, bias=version.bias, steps=version.steps,
                   seen=version.seen)


@dataclass
class Registry:
    """What a worker knows of the ``models`` topic: the head and the kept checkpoints."""

    head: ModelVersion | None = None
    checkpoints: dict[int, ModelVersion] = field(default_factory=dict)
    projections: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    applied: int = 0                  # records read

    def apply(self, key: bytes | None, value: bytes | None) -> ModelVersion | None:
        """One record of the topic; returns the new head when it changed."""
        self.applied += 1
        if not key:
            return None
        if key.startswith(PROJECTION_PREFIX):
            name = key[len(PROJECTION_PREFIX):].decode()
            if value:
                self.projections[name] = decode_projection(value)
            else:
                self.projections.pop(name, None)
            return None
        if key.startswith(CHECKPOINT_PREFIX):
            generation = int(key[len(CHECKPOINT_PREFIX):])
            if value:
                self.checkpoints[generation] = decode_version(value)
            else:
                self.checkpoints.pop(generation, None)
            return None
        if key == HEAD and value:
            self.head = decode_version(value)
            return self.head
        return None

    def rollback_target(self, to: str | None = None) -> ModelVersion | None:
        """The checkpoint a rollback by command goes to: the named version, else the
        newest checkpoint older than the head's generation."""
        ordered = sorted(self.checkpoints.values(), key=lambda v: v.generation)
        if to is not None:
            return next((v for v in ordered if v.version == to), None)
        if self.head is None:
            return ordered[-1] if ordered else None
        head = self.head
        older = [v for v in ordered if v.generation < head.generation
                 and v.version != head.version]
        return older[-1] if older else None
