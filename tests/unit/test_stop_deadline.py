"""The worker's stop deadline: armed once, it ends the process after its seconds (cleanup
first, even a failing one); disarmed in time, it does nothing."""

from __future__ import annotations

import threading
import time

from app.worker.main import PAST_DEADLINE_EXIT, StopDeadline


def _deadline(seconds: float, before: list[str], fail: bool = False
              ) -> tuple[StopDeadline, list[int], threading.Event]:
    codes: list[int] = []
    ended = threading.Event()

    def cleanup() -> None:
        before.append("cleanup")
        if fail:
            raise RuntimeError("the broker would not stop")

    def exit_(code: int) -> None:
        codes.append(code)
        ended.set()

    return StopDeadline(seconds, cleanup, exit_), codes, ended


def test_an_armed_deadline_cleans_up_then_ends_the_process_once() -> None:
    before: list[str] = []
    deadline, codes, ended = _deadline(0.05, before)
    started = time.monotonic()
    deadline.arm("SIGTERM")
    deadline.arm("SIGINT")                       # a second signal does not re-arm
    assert ended.wait(5)
    assert time.monotonic() - started >= 0.05
    time.sleep(0.1)
    assert codes == [PAST_DEADLINE_EXIT]
    assert before == ["cleanup"]


def test_a_failing_cleanup_does_not_keep_the_process_alive() -> None:
    before: list[str] = []
    deadline, codes, ended = _deadline(0.01, before, fail=True)
    deadline.arm("SIGTERM")
    assert ended.wait(5)
    assert codes == [PAST_DEADLINE_EXIT]


def test_a_disarmed_deadline_does_nothing() -> None:
    before: list[str] = []
    deadline, codes, ended = _deadline(0.05, before)
    deadline.arm("SIGTERM")
    deadline.disarm()
    assert not ended.wait(0.2)
    assert codes == []
    assert before == []
    deadline.disarm()                            # harmless when not armed too
