"""A worker asked to stop exits within its stop deadline even when its broker is gone:
Faust's own stop waits on the broker (measured: 62 s), so after
``STREAMREC_STOP_DEADLINE_SECONDS`` the worker ends itself (state survives that as it
survives SIGKILL: tests/integration/test_restart.py)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from app.broker.apache import KafkaBroker, free_port
from app.worker.main import PAST_DEADLINE_EXIT
from tests.support.worker import WorkerProcess, isolated_env


@pytest.mark.slow
def test_a_worker_whose_broker_is_gone_stops_within_its_deadline(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka")     # its own broker: this test kills it
    broker.start()
    env = {**isolated_env(broker.bootstrap, tmp_path / "w"),
           "STREAMREC_STOP_DEADLINE_SECONDS": "5"}
    healthy = WorkerProcess({**env, "STREAMREC_STOP_DEADLINE_SECONDS": "20",
                             "STREAMREC_DATA_DIR": str(tmp_path / "h"),
                             "STREAMREC_WEB_PORT": str(free_port())},
                            tmp_path / "healthy.log").start()
    worker = WorkerProcess(env, tmp_path / "w.log").start()
    try:
        # with its broker there, a worker stops cleanly, well within the default deadline
        healthy.wait_ready()
        assert healthy.process is not None
        asked = time.monotonic()
        healthy.process.send_signal(signal.SIGTERM)
        assert healthy.process.wait(timeout=60) == 0
        print(f"a worker with its broker stopped in {time.monotonic() - asked:.1f}s")
        assert "stop deadline" not in healthy.log.read_text()

        worker.wait_ready()
        broker.kill()                            # the broker is gone, no goodbye
        time.sleep(3.0)
        assert worker.process is not None
        asked = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        code = worker.process.wait(timeout=60)
        took = time.monotonic() - asked
        print(f"worker exited {code} {took:.1f}s after SIGTERM")
        assert took < 5.0 + 3.0, f"the worker took {took:.1f}s to stop"
        # usually Faust's stop hangs on the missing broker and the deadline ends it (exit 3,
        # said in the log); once (2026-12-05) it stopped cleanly in 2.2 s: both are in time
        assert code in (0, PAST_DEADLINE_EXIT)
        assert (code == PAST_DEADLINE_EXIT) == ("stop deadline" in worker.log.read_text())
    finally:
        healthy.stop()
        worker.stop()
        broker.stop()
