"""Users fall into experiment variants deterministically and in proportion."""

from __future__ import annotations

from collections import Counter

import pytest

from app.core.experiments import Experiment, bucket, variant_of


def test_assignment_is_deterministic_and_proportional() -> None:
    ab = Experiment("ranker-2026-11")
    users = [f"user-{n}" for n in range(20_000)]
    first = [variant_of(ab, u) for u in users]
    assert first == [variant_of(Experiment("ranker-2026-11"), u) for u in users]
    counts = Counter(first)
    assert set(counts) == {"frozen", "learning"}
    assert abs(counts["learning"] / len(users) - 0.5) < 0.02
    skewed = Counter(variant_of(Experiment("e", {"a": 0.9, "b": 0.1}), u) for u in users)
    assert abs(skewed["b"] / len(users) - 0.1) < 0.01


def test_experiments_shuffle_users_independently() -> None:
    users = [f"user-{n}" for n in range(10_000)]
    one = [variant_of(Experiment("one"), u) for u in users]
    two = [variant_of(Experiment("two"), u) for u in users]
    agreement = sum(a == b for a, b in zip(one, two, strict=True)) / len(users)
    assert 0.47 < agreement < 0.53                  # independent halves agree half the time
    assert all(0 <= bucket("x", u) < 10_000 for u in users[:100])


def test_bad_shares_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        Experiment("e", {"a": -1.0})
    with pytest.raises(ValueError, match="all be zero"):
        Experiment("e", {"a": 0.0})
    assert variant_of(Experiment("e", {"off": 0.0, "on": 1.0}), "u") == "on"
