"""A real Prometheus server for the tests: the Debian package's binary, found on PATH or
fetched by `apt-get download` and unpacked into ~/.cache/streamrec (no root, no system
install), started on a free port with the scrape job and the alert rules of deploy/."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from app.broker.apache import free_port
from app.broker.embedded import stop_process
from tests.support.debian import program

ROOT = Path(__file__).resolve().parents[2]


def binary(name: str) -> Path:
    """``prometheus`` or ``promtool``: on PATH, or from the Debian package, fetched once."""
    return program(name, ["prometheus"], "prometheus-deb")


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        job = config["scrape_configs"][0]
        job.pop("dns_sd_configs")       # compose's DNS discovery -> the test's workers
        job["static_configs"] = [{"targets": targets}]
        config["rule_files"] = [str(ROOT / "deploy/prometheus/alerts.yml")]
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.process = subprocess.Popen(
                [str(binary("prometheus")), f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"prometheus not ready; see {self.workdir / 'prometheus.log'}")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=5) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def value(self, expr: str) -> float | None:
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop_process(self.process, grace=10)
