"""Versioned ranker parameters: the last N versions, and when to roll back (pure functions).

Every parameter update the learner publishes is a new version; a worker keeps the newest
``keep`` and serves the current one. A new version is rolled back when its online
click-through is significantly below its predecessor's: a one-sided two-proportion z-test on
clicks over impressions, decided only once both have enough impressions, so noise on a few
hundred impressions cannot flip the ranker back and forth. An operator can roll back by
command the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from app.core.ranking import RankerParams


@dataclass(frozen=True)
class Traffic:
    impressions: int = 0
    clicks: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


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


@dataclass(frozen=True)
class History:
    """The newest ``keep`` parameter versions, current last."""

    versions: tuple[RankerParams, ...] = field(default_factory=lambda: (RankerParams(),))
    keep: int = 5

    @property
    def current(self) -> RankerParams:
        return self.versions[-1]

    def push(self, params: RankerParams) -> History:
        if any(p.version == params.version for p in self.versions):
            raise ValueError(f"version {params.version} is already known")
        return replace(self, versions=(*self.versions, params)[-self.keep:])

    def roll_back(self) -> History:
        """Back to the previous version (the current one is dropped); the oldest stays."""
        if len(self.versions) < 2:
            return self
        return replace(self, versions=self.versions[:-1])
