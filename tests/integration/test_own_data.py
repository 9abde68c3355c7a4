"""Your own data through the real pipeline: a generated shop's CSV log and items file,
described by a dataset file, replayed through a worker on Apache Kafka with `streamrec
replay` and scored with `streamrec eval`, as a team would try StreamRec on its own log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.broker.apache import KafkaBroker
from tests.support.own_data import generated_shop

pytestmark = pytest.mark.timeout(900)


def _streamrec(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, timeout=800, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


def test_a_shop_log_is_replayed_and_scored_like_movielens(kafka: KafkaBroker,
                                                          tmp_path: Path) -> None:
    spec = generated_shop(tmp_path / "shop")
    runs = tmp_path / "runs"
    _streamrec("replay", "--dataset", str(spec), "--variants", "streamrec", "--k", "20",
               "--broker", kafka.bootstrap, "--out", str(runs))
    assert (runs / "shop").is_dir()          # filed under the dataset file's name
    run = json.loads((runs / "shop" / "streamrec.json").read_text())
    assert run["profiles"] == 75             # every other customer's, before the stream
    report = json.loads(_streamrec("eval", "--dataset", str(spec), "--runs", str(runs),
                                   "--json"))
    assert report["dataset"] == "shop"
    ours = report["models"]["streamrec"]["all"]
    popular = report["models"]["popularity"]["all"]
    # each customer keeps to one aisle: the pipeline must find it, popularity cannot
    assert ours["HR@10"] > popular["HR@10"], report["models"]
    assert ours["NDCG@10"] > 0
