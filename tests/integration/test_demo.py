"""The main job (`streamrec demo`, README's first command) as a newcomer runs it, on the
embedded broker, and as docker compose's demo service runs it: loading MovieLens-100K into
a Kafka whose worker is already running (--worker-url), here Apache Kafka."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.broker.apache import KafkaBroker, free_port
from tests.support.worker import WorkerProcess, isolated_env

pytestmark = pytest.mark.timeout(600)
RATINGS = 3000


def _demo(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--limit", str(RATINGS),
                           "--rate", "0", "--timeout", "400", *args], env=env,
                          capture_output=True, text=True, timeout=500, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    return output


def _shown(output: str) -> None:
    assert "worker ready" in output
    assert "published 1,682 items and 943 user profiles of ml-100k" in output
    assert "  for user " in output                       # recommendations, as published
    assert "  dead letter from " in output               # the injected bad records
    final = [line for line in re.split(r"[\r\n]", output) if "sent " in line][-1]
    assert "lag 0" in final


def test_the_main_job_on_the_embedded_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(STREAMREC_DATA_DIR=str(tmp_path / "data"),
               STREAMREC_EMBEDDED_PORT=str(free_port()), STREAMREC_WEB_PORT=str(free_port()))
    output = _demo(env)
    assert "embedded broker (Tansu, memory-only)" in output
    _shown(output)


def test_the_compose_demo_loads_data_for_a_running_worker(
        kafka: KafkaBroker, worker: WorkerProcess, tmp_path: Path) -> None:
    env = {**isolated_env(kafka.bootstrap, tmp_path / "demo"),
           **{k: v for k, v in worker.env.items() if k.startswith("STREAMREC_TOPIC_")},
           "STREAMREC_APP_ID": worker.env["STREAMREC_APP_ID"]}
    output = _demo(env, "--worker-url", worker.base_url)
    assert "embedded broker" not in output
    assert f"waiting for the worker at {worker.base_url}" in output
    _shown(output)
    assert worker.metric("streamrec_input_records_total", topic="events",
                         outcome="accepted") >= RATINGS * 0.9
