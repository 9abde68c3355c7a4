"""A user's interest: a time-decayed, event-weighted sum of the vectors of what they did.

Each signal (a viewed, carted or bought item's vector, or an embedded search query) enters
with its event-type weight; everything older fades with a half-life measured in event
time, so replaying history gives the same profile as living through it. The user vector of
the design, u = norm(W1 x + b1), is computed from this sum by the ranker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.contract.records import UserProfile
from app.core.consumed import CONSUMED_LIMIT
from app.core.sequence import SEQUENCE_LENGTH

FloatArray = npt.NDArray[np.float32]

# view < search < cart < purchase (documented in docs/pipeline.md)
EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "search": 1.2, "add_to_cart": 1.5,
                                   "purchase": 2.0}
# What co-visitation and the recent-item candidates count: which items follow which, every
# interaction alike (a bought item was usually viewed first, so it already counts twice).
# Weighing purchases here as in the interest vector cost NDCG@10 0.128 -> 0.122 in the
# ML-1M stand-in (docs/pipeline.md).
SEQUENCE_WEIGHTS: dict[str, float] = dict.fromkeys(EVENT_WEIGHTS, 1.0)
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class ProfileParams:
    half_life_ms: int = 14 * DAY_MS
    recent_size: int = 50
    purchased_size: int = 500
    consumed_size: int = CONSUMED_LIMIT   # items in the seen-set (4 bytes each)
    sequence_size: int = SEQUENCE_LENGTH  # item events the behaviour model reads (6 bytes each)


@dataclass(frozen=True, slots=True)
class Interest:
    """The decayed sum of signals, its decayed total weight, and the event time both refer to."""

    vector: FloatArray
    weight: float
    as_of: int

    @classmethod
    def empty(cls, dimension: int) -> Interest:
        return cls(np.zeros(dimension, dtype=np.float32), 0.0, 0)

    def unit(self) -> FloatArray | None:
        """The direction of interest, or None when there is none yet."""
        norm = float(np.linalg.norm(self.vector))
        if norm == 0.0:
            return None
        direction: FloatArray = (self.vector / norm).astype(np.float32)
        return direction


def decay(elapsed_ms: int, half_life_ms: int) -> float:
    """How much of a signal is left after ``elapsed_ms`` (never more than all of it)."""
    if elapsed_ms <= 0:
        return 1.0
    return float(0.5 ** (elapsed_ms / half_life_ms))


def add_signal(interest: Interest, signal: FloatArray, weight: float, ts: int,
               half_life_ms: int) -> Interest:
    """Fold one signal in. A late signal (older than ``as_of``) enters already decayed, so
    the result does not depend on arrival order."""
    if ts >= interest.as_of:
        keep = decay(ts - interest.as_of, half_life_ms)
        vector = interest.vector * keep + weight * signal
        return Interest(vector.astype(np.float32), interest.weight * keep + weight, ts)
    faded = weight * decay(interest.as_of - ts, half_life_ms)
    vector = interest.vector + faded * signal
    return Interest(vector.astype(np.float32), interest.weight + faded, interest.as_of)


def bounded_append(items: Sequence[str], item: str, limit: int) -> list[str]:
    """``items`` with ``item`` moved (or added) to the end, keeping the newest ``limit``."""
    kept = [existing for existing in items if existing != item]
    kept.append(item)
    return kept[-limit:]


def segments_of(profile: UserProfile | None) -> tuple[str, ...]:
    """A user's profile segments, the keys of per-segment popularity: one per known
    attribute among age band, gender, occupation and locale."""
    if profile is None:
        return ()
    pairs = (("age", profile.age_band), ("gender", profile.gender),
             ("occupation", profile.occupation), ("locale", profile.locale))
    return tuple(f"{name}:{value.strip().casefold()}" for name, value in pairs
                 if value and value.strip())
