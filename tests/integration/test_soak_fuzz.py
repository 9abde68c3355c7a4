"""`streamrec soak fuzz`, the CI size: 10,000 generated records (about three in four
hostile) through a real worker on Apache Kafka, and undecodable records on the topics it
follows; every record accounted for (app/soak/fuzz.py says how)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from app.broker.apache import KafkaBroker
from app.contract.validate import Reason
from app.soak import fuzz

RECORDS = 10_000


def test_ten_thousand_fuzzed_records_each_accounted_for(kafka: KafkaBroker,
                                                         tmp_path: Path) -> None:
    report = asyncio.run(fuzz.run(RECORDS, seed=3, broker=kafka.bootstrap, max_rss_mb=1_500,
                                  say=print, progress=lambda *_: None, workdir=tmp_path))
    summary = {k: v for k, v in report.items() if k != "rss_samples"}
    assert report["passed"], json.dumps(summary, indent=1)
    assert report["worker_survived"]
    dead = report["deadletters"]
    assert dead["expected"] > RECORDS // 2   # most of them hostile...
    assert dead["dead_letters"] == dead["expected"]
    assert sum(report["oracle"]["accepted"].values()) > RECORDS // 10   # ...and real work
    assert report["state"]["users"] > 100
    assert report["catalogue"]["expected"] > 50
    # every reason the contract has but the worker's own failure
    assert set(report["oracle"]["reasons"]) == {r.value for r in Reason} - {"processing_error"}
    assert report["processing_errors"].get("catalogue", 0) > 0   # the followers met them
