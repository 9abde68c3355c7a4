from __future__ import annotations

import logging

import pytest

from app.logs import OncePer
from app.metrics import Metrics
from app.worker import results


def test_a_cause_is_logged_at_once_then_once_per_period_with_what_was_held() -> None:
    now = [0.0]
    limit = OncePer(60.0, clock=lambda: now[0])
    assert limit.allow("a") == 0
    assert [limit.allow("a") for _ in range(5)] == [None] * 5
    assert limit.allow("b") == 0   # another cause is not held back by the first
    now[0] = 61.0
    assert limit.allow("a") == 5
    assert limit.allow("a") is None


def test_a_flood_of_one_failure_is_counted_in_full_and_logged_once(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "_failures", OncePer(60.0))
    metrics = Metrics.create()
    with caplog.at_level(logging.ERROR, logger="app.worker.agents"):
        for _ in range(1000):
            try:
                raise ValueError("payload text that must not be logged")
            except ValueError as exc:
                results.count_failure(metrics, "catalogue", exc)
    assert metrics.processing_errors.labels("catalogue")._value.get() == 1000
    assert len(caplog.records) == 1
    assert "ValueError" in caplog.text
    assert "payload" not in caplog.text
