"""Pure helpers of the benchmarks."""

from __future__ import annotations

from pathlib import Path

from app.bench.pipeline import summarise_profile


def test_profile_summary_counts_inclusive_and_self_time(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "run (loop.py:1);process_batch (app/worker/agents.py:10);recommend (app/core/r.py:5) 6\n"
        "run (loop.py:1);process_batch (app/worker/agents.py:10) 2\n"
        "run (loop.py:1);poll (aiokafka/consumer.py:3) 2\n"
    )
    text = summarise_profile(raw)
    assert text.startswith("10 samples")
    inclusive, own = text.split("self (")
    assert "100.0%  run (loop.py)" in inclusive
    assert " 80.0%  process_batch (agents.py)" in inclusive
    assert " 60.0%  recommend (r.py)" in own
    assert " 20.0%  poll (consumer.py)" in own
