"""Rollback: a significantly worse new version goes, noise does not flip the ranker."""

from __future__ import annotations

import pytest

from app.core.ranking import RankerParams
from app.core.versions import History, Traffic, compare


def test_a_significantly_worse_version_is_rolled_back() -> None:
    old = Traffic(impressions=20_000, clicks=1_000)              # 5.0%
    verdict = compare(Traffic(impressions=20_000, clicks=800), old)   # 4.0%
    assert verdict.roll_back
    assert verdict.z < -2.33
    assert not compare(Traffic(impressions=20_000, clicks=980), old).roll_back   # noise
    assert not compare(Traffic(impressions=20_000, clicks=1_200), old).roll_back  # better
    early = compare(Traffic(impressions=300, clicks=0), old)
    assert not early.roll_back
    assert early.reason == "not enough impressions yet"
    assert not compare(Traffic(5_000, 0), Traffic(5_000, 0)).roll_back


def test_history_keeps_the_newest_versions_and_rolls_back_to_the_previous() -> None:
    history = History(keep=3)
    assert history.current.version == RankerParams().version
    for n in range(1, 5):
        history = history.push(RankerParams(version=f"learnt-{n}", semantic=float(n)))
    assert [p.version for p in history.versions] == ["learnt-2", "learnt-3", "learnt-4"]
    history = history.roll_back()
    assert history.current.version == "learnt-3"
    assert history.roll_back().roll_back().current.version == "learnt-2"  # the oldest stays
    with pytest.raises(ValueError, match="already known"):
        history.push(RankerParams(version="learnt-2"))
