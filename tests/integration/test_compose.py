"""docker-compose.yml validates with `docker compose config` (no engine needed) and has the
topology the tests mirror: Kafka, a one-shot topic initialiser, scalable workers, Prometheus
and Grafana, with healthchecks and the provisioned files that exist in deploy/."""

from __future__ import annotations

import json
import shutil
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
    assert "ports" not in worker
    assert all(v.get("type") == "volume" and not v.get("source")
               for v in worker["volumes"])                             # state per replica
    for name in ("kafka", "worker", "prometheus", "grafana"):
        assert services[name].get("healthcheck"), name
    assert services["topics"]["command"] == ["topics"]
    assert services["trainer"]["command"][:2] == ["train", "--stream"]
    assert services["trainer"]["build"]["args"] == {"EXTRAS": "[train]"}
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
