"""Worker processes for integration tests: each test gets its own app id, topic names, data
dir and web port, so tests never see each other's records or state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from app.broker.apache import free_port
from app.broker.embedded import die_with_parent, stop_process
from app.metrics import scrape, total
from app.settings import Settings


def isolated_env(bootstrap: str | None, data_dir: Path, partitions: int = 4) -> dict[str, str]:
    """Environment of a worker with unique names; ``bootstrap`` None means embedded."""
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({
        "STREAMREC_APP_ID": f"test-{tag}",
        **{f"STREAMREC_TOPIC_{t.upper()}": f"{t}-{tag}" for t in Settings.topic_names()},
        "STREAMREC_PARTITIONS": str(partitions),
        "STREAMREC_DATA_DIR": str(data_dir),
        "STREAMREC_WEB_PORT": str(free_port()),
        "STREAMREC_SESSION_TIMEOUT_SECONDS": "10",
        "STREAMREC_LOG_LEVEL": "info",
    })
    if bootstrap is not None:
        env["STREAMREC_BROKER_URL"] = bootstrap
    else:
        env["STREAMREC_EMBEDDED_BROKER"] = "true"   # a worker needs telling to run embedded
    return env



class WorkerProcess:
    """`streamrec worker` as a child process, as an operator would run it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['STREAMREC_WEB_PORT']}"

    def start(self) -> WorkerProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        return self

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def wait_ready(self, within: float = 90.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited: {self.log.read_text()[-3000:]}")
            try:
                if self._get("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"worker not ready in {within}s: {self.log.read_text()[-3000:]}")

    def metric(self, name: str, **labels: str) -> float:
        return total(scrape(self.base_url + "/metrics"), name, **labels)

    def wait_metric(self, name: str, at_least: float, within: float = 60.0,
                    **labels: str) -> float:
        return wait_total([self], name, at_least, within, **labels)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit, no flush."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.process, grace=30)


def wait_total(workers: list[WorkerProcess], name: str, at_least: float,
               within: float = 60.0, **labels: str) -> float:
    """Wait until a metric summed over ``workers`` reaches ``at_least``."""
    deadline = time.monotonic() + within
    value = 0.0
    while time.monotonic() < deadline:
        value = sum(w.metric(name, **labels) for w in workers)
        if value >= at_least:
            return value
        time.sleep(0.2)
    logs = "".join(f"\n--- {w.log.name} (last lines) ---\n{_tail(w.log)}" for w in workers)
    raise AssertionError(f"{name}{labels} = {value} < {at_least} after {within}s{logs}")


def wait_assigned(workers: list[WorkerProcess], topic: str, partitions: int,
                  within: float = 90.0) -> list[set[int]]:
    """Wait until every worker holds at least one partition of ``topic`` and together they
    hold each of its ``partitions`` once, the same in two readings in a row (each worker
    reports its assignment as ``streamrec_consumer_lag_records`` every 5 s, so a group
    still rebalancing does not pass). Returns each worker's partitions."""
    deadline = time.monotonic() + within
    held: list[set[int]] = []
    before: list[set[int]] | None = None
    while time.monotonic() < deadline:
        held = [{int(dict(labels)["partition"])
                 for (name, labels), _ in scrape(w.base_url + "/metrics").items()
                 if name == "streamrec_consumer_lag_records"
                 and dict(labels).get("topic") == topic}
                for w in workers]
        whole = all(held) and sorted(p for h in held for p in h) == list(range(partitions))
        if whole and held == before:
            return held
        before = held if whole else None
        time.sleep(2.6)
    logs = "".join(f"\n--- {w.log.name} (last lines) ---\n{_tail(w.log)}" for w in workers)
    raise AssertionError(f"{topic}'s {partitions} partitions not spread over every worker "
                         f"after {within}s: {held}{logs}")


def _tail(log: Path, lines: int = 25) -> str:
    """The end of a worker's log, for a failure message (a test's tmp dir is gone in CI)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"
