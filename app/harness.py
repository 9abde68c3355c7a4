"""Running real workers as subprocesses against a broker, for the benchmark and the replay:
unique topics and a consumer group per run, settings through STREAMREC_* variables, the
worker's own /metrics to wait on, and a producer that records acknowledgements."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer

from app.broker.admin import end_tracker
from app.broker.apache import free_port
from app.broker.embedded import die_with_parent, stop_process
from app.metrics import Samples, scrape, total
from app.settings import Settings


class WorkerRun:
    """One run's settings (fresh topics and group) and its worker subprocesses: one, or
    several in the same consumer group (:meth:`with_workers`), each with its own data folder
    and web port (the first's are ``base_url`` and ``metrics_url``)."""

    def __init__(self, bootstrap: str, workdir: Path, partitions: int, name: str = "bench",
                 **settings: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        self.env.update({
            "STREAMREC_BROKER_URL": bootstrap,
            "STREAMREC_APP_ID": f"{name}-{tag}",
            "STREAMREC_PARTITIONS": str(partitions),
            "STREAMREC_DATA_DIR": str(workdir / "worker"),
            "STREAMREC_WEB_PORT": str(free_port()),
            "STREAMREC_LOG_LEVEL": "warning",
            **{f"STREAMREC_TOPIC_{t.upper()}": f"{t}-{tag}" for t in Settings.topic_names()},
            **{f"STREAMREC_{k.upper()}": v for k, v in settings.items()},
        })
        self.settings = Settings.model_validate({
            k.removeprefix("STREAMREC_").lower(): v
            for k, v in self.env.items() if k.startswith("STREAMREC_")
        })
        self.workdir = workdir
        self.base_url = f"http://127.0.0.1:{self.env['STREAMREC_WEB_PORT']}"
        self.metrics_url = f"{self.base_url}/metrics"
        # the other members of the group: their own data folder and port, the rest shared
        self._members: list[dict[str, str]] = []
        self.base_urls = [self.base_url]
        self.metrics_urls = [self.metrics_url]
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "worker.log"
        self.worker: subprocess.Popen[bytes] | None = None
        self.others: list[subprocess.Popen[bytes]] = []

    def with_workers(self, workers: int) -> WorkerRun:
        """``workers`` worker processes in the group instead of one (before starting)."""
        if workers < 1:
            raise ValueError("a run needs at least one worker")
        self._members = [{"STREAMREC_DATA_DIR": str(self.workdir / f"worker-{n}"),
                          "STREAMREC_WEB_PORT": str(free_port())} for n in range(1, workers)]
        self.base_urls = [self.base_url] + [
            f"http://127.0.0.1:{m['STREAMREC_WEB_PORT']}" for m in self._members]
        self.metrics_urls = [f"{url}/metrics" for url in self.base_urls]
        return self

    def start_worker(self, module: str = "app.cli", **overrides: str) -> None:
        """The worker processes (``app.worker.ceiling`` for the decode-only reference, one
        process only); ``overrides`` are extra STREAMREC_* settings, e.g. a fresh APP_ID."""
        env = {**self.env, **{f"STREAMREC_{k.upper()}": v for k, v in overrides.items()}}
        args = [sys.executable, "-m", module] + (["worker"] if module == "app.cli" else [])
        with self.log.open("ab") as log:
            self.worker = subprocess.Popen(args, env=env, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           preexec_fn=die_with_parent)
        if module != "app.cli":
            return
        for n, member in enumerate(self._members, start=1):
            with self.log.with_name(f"worker-{n}.log").open("ab") as log:
                self.others.append(subprocess.Popen(
                    args, env={**env, **member}, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, preexec_fn=die_with_parent))

    def alive(self) -> bool:
        return (self.worker is not None and self.worker.poll() is None
                and all(p.poll() is None for p in self.others))

    def stop_worker(self) -> None:
        for process in [self.worker, *self.others]:
            stop_process(process, grace=30)
        self.worker, self.others = None, []

    def samples(self, only: str = "") -> Samples:
        """Every worker's /metrics samples, summed per name and labels (``only``: the
        samples of that name alone, which is all the worker then renders)."""
        merged: Samples = {}
        asked = f"?{urllib.parse.urlencode({'name[]': only})}" if only else ""
        for url in self.metrics_urls:
            for key, value in scrape(url + asked).items():
                merged[key] = merged.get(key, 0.0) + value
        return merged

    def total(self, name: str, **labels: str) -> float:
        """A metric summed over every worker's /metrics (and over samples with ``labels``)."""
        return total(self.samples(), name, **labels)

    def processed(self) -> float:
        """Records of the events topic every worker together has processed."""
        return total(self.samples("streamrec_input_records_total"),
                     "streamrec_input_records_total", topic="events")

    async def wait_ready(self, within: float = 300.0) -> None:
        """Until every worker answers /ready (its share of partitions assigned and
        recovered)."""
        for url, process in zip(self.base_urls, [self.worker, *self.others], strict=False):
            await wait_worker_ready(url, process, within)

    async def wait_metric(self, name: str, at_least: float, within: float = 300.0,
                          every: bool = False, **labels: str) -> None:
        """Until the workers' ``name`` (summed over samples with ``labels``, and over the
        workers; with ``every``, on each worker) reaches ``at_least``; a worker that exits
        or a deadline passed raise."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.worker is not None and not self.alive():
                raise RuntimeError(f"worker exited; see {self.log}")
            try:
                values = [total(await asyncio.to_thread(scrape, url), name, **labels)
                          for url in self.metrics_urls]
                if (min(values) if every else sum(values)) >= at_least:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.25)
        raise TimeoutError(f"{name} did not reach {at_least}")


async def produce_records(bootstrap: str, topic: str,
                          records: list[tuple[bytes, bytes, str]], rate: float | None,
                          sent: dict[str, float], ends: dict[tuple[str, int], int],
                          gate: Callable[[int], Awaitable[None]] | None = None,
                          progress: Callable[[int, int, float], None] | None = None,
                          linger_ms: int = 5) -> float:
    """Send ``records`` (paced at ``rate``/s, or flat out); returns the first send time.
    ``gate(n)``, when given and not paced, is awaited before record ``n`` (flow control);
    ``progress(done, of, seconds)`` is told every 1,000 records."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms,
                                max_batch_size=256 * 1024)
    await producer.start()

    done = end_tracker(ends)

    started = time.time()
    try:
        for n, (key, value, event_id) in enumerate(records):
            if rate:
                ahead = n / rate - (time.time() - started)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            elif gate is not None:
                await gate(n)
            sent[event_id] = time.time()
            (await producer.send(topic, value, key=key)).add_done_callback(done)
            if progress and n % 1000 == 0:
                progress(n, len(records), time.time() - started)
        await producer.flush()
    finally:
        await producer.stop()
    return started


def http_status(url: str) -> int:
    """The HTTP status a GET of ``url`` answers (0: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local worker
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


async def wait_worker_ready(base_url: str, worker: subprocess.Popen[bytes] | None,
                            within: float) -> None:
    """Until the worker at ``base_url`` answers ``/ready`` with 200: RuntimeError if its
    process (``worker``; None: one running elsewhere) exits first, TimeoutError after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if worker is not None and worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        if await asyncio.to_thread(http_status, base_url + "/ready") == 200:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("the worker did not become ready")


def flow_control(run: WorkerRun, window: int, already: float = 0.0
                 ) -> Callable[[int], Awaitable[None]]:
    """A gate for the producer: once ``window`` records run ahead of what the worker has
    processed (its /metrics, less the ``already`` processed before), wait until no more
    than half of that does."""
    processed = 0.0

    async def gate(n: int) -> None:
        nonlocal processed
        if n - processed < window:
            return
        while n - processed >= window // 2:
            if not run.alive():
                raise RuntimeError(f"the worker exited; see {run.log}")
            processed = await asyncio.to_thread(run.processed) - already
            if n - processed >= window // 2:
                await asyncio.sleep(0.1)   # each look asks the worker for one counter

    return gate


async def wait_processed(run: WorkerRun, count: int, already: float = 0.0,
                         progress: Callable[[int, int, float], None] | None = None,
                         began: float | None = None, poll: float = 0.2) -> None:
    """Wait until the worker has processed ``count`` more events than ``already`` (its
    /metrics); ``progress(done, count, seconds since began)`` is told at each look."""
    began = time.monotonic() if began is None else began
    while (done := await asyncio.to_thread(run.processed) - already) < count:
        if not run.alive():
            raise RuntimeError(f"the worker exited; see {run.log}")
        if progress:
            progress(int(done), count, time.monotonic() - began)
        await asyncio.sleep(poll)
    if progress:
        progress(count, count, time.monotonic() - began)
