"""The performance guard: `streamrec bench pipeline --quick` on the session's Apache Kafka.
StreamRec's events per worker CPU-second, as a share of Faust's decode-only ceiling measured
in the same run, must stay above the floor (app.bench.pipeline.QUICK_FLOOR, about 60% of
the share at HEAD): noise passes, a 2x regression fails. BENCHMARKS.md, "The guard", says how
the floor was set and how to move it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.bench.pipeline import CEILING, QUICK_FLOOR
from app.broker.apache import KafkaBroker


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_streamrec_keeps_its_share_of_the_decode_only_ceiling(kafka: KafkaBroker) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "bench", "pipeline", "--quick", "--json",
         "--broker", kafka.bootstrap],
        capture_output=True, text=True, timeout=580, check=False)
    assert done.stdout.strip(), f"no report (exit {done.returncode}):\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    per_core = report["variants_events_per_cpu_second"]
    shown = (f"StreamRec {per_core['streamrec']:,.0f} / ceiling {per_core[CEILING]:,.0f} "
             f"events per CPU-second = {report['ceiling_ratio']:.3f} (floor {QUICK_FLOOR}); "
             f"runs {report['runs_events_per_cpu_second']}")
    print(shown)
    assert report["ceiling_ratio"] >= QUICK_FLOOR, shown
    assert report["passed"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["events"] >= 30_000
