"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.broker.apache import KafkaBroker
from tests.support.worker import WorkerProcess, isolated_env


@pytest.fixture
def worker(kafka: KafkaBroker, tmp_path: Path) -> Iterator[WorkerProcess]:
    """One ready worker on the session's Apache Kafka, with its own topics and group."""
    process = WorkerProcess(isolated_env(kafka.bootstrap, tmp_path / "data"),
                            tmp_path / "worker.log").start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
