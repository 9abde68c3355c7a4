"""A/B experiments: deterministic assignment of users to variants (pure functions).

A user's variant is a function of the experiment's name and the user id alone (a keyed
hash, not a random draw and not a table): every worker, every restart and every replay puts
the same user in the same variant, and a new experiment name reshuffles users independently
of earlier ones. Shares are given per variant; the hash spreads users in proportion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

BUCKETS = 10_000


@dataclass(frozen=True)
class Experiment:
    name: str
    shares: Mapping[str, float] = field(
        default_factory=lambda: {"frozen": 0.5, "learning": 0.5})

    def __post_init__(self) -> None:
        if not self.shares or any(share < 0 for share in self.shares.values()):
            raise ValueError("an experiment needs variants with non-negative shares")
        if sum(self.shares.values()) <= 0:
            raise ValueError("an experiment's shares must not all be zero")


def bucket(experiment: str, user_id: str) -> int:
    """The user's bucket in [0, BUCKETS) for this experiment."""
    digest = hashlib.blake2b(user_id.encode(), key=experiment.encode()[:64],
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def variant_of(experiment: Experiment, user_id: str) -> str:
    """The variant ``user_id`` is in: the same answer everywhere, every time."""
    total = sum(experiment.shares.values())
    point = bucket(experiment.name, user_id) / BUCKETS * total
    running = 0.0
    for name, share in experiment.shares.items():
        running += share
        if point < running:
            return name
    return next(reversed(list(experiment.shares)))   # rounding at the very top
