"""`streamrec soak burst`, the CI size: one worker on its own Apache Kafka, a steady stream of
views, then a burst well past what the worker can keep up with, then the steady stream
again, while a reader of the recommendations topic has stalled: the worker's lag is in its
metrics, it catches up on its own, its memory stays bounded and no event is lost
(app/soak/burst.py says how)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from app.soak import burst


@pytest.mark.slow
def test_a_burst_is_worked_off_with_the_lag_visible_and_nothing_lost(tmp_path: Path) -> None:
    plan = burst.Plan(users=1_000, rate=150, burst=20, steady_seconds=10, burst_seconds=15,
                      tail_seconds=5, within=240, max_rss_mb=1_000, seed=1)
    report = asyncio.run(burst.run(plan, None, print, lambda *_: None, workdir=tmp_path))
    summary = json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1)
    assert report["passed"], summary
    # the burst did outrun the worker (else this tested nothing), and it was seen
    assert report["lag"]["peak"] > 5 * report["lag"]["steady_peak"], summary
    assert report["stalled_reader"]["read"] == 1
    assert report["stalled_reader"]["unread_lists"] > 0
