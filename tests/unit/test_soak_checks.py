"""The soaks' checks on hand-made inputs: the crash soak's on the output topic (what counts
as a list published twice, which event a user's lists answer last), and the burst soak's
verdict on its samples."""

from __future__ import annotations

from pathlib import Path

from app.soak.burst import Sample, _failures, _per_second, _rising, _settled
from app.soak.crash import repeated_lists


def test_lists_in_order_are_never_repeats() -> None:
    twice, answered = repeated_lists([(b"a", 1), (b"b", 5), (b"a", 3), (b"a", 4)])
    assert twice == 0
    assert answered == {b"a": 4, b"b": 5}


def test_a_list_answering_no_newer_event_is_a_repeat() -> None:
    # a batch processed twice after a kill: its list again (same source event), or a list
    # whose batch ended earlier than one already published (the batch cut differently)
    lists = [(b"a", 10), (b"a", 12), (b"a", 12), (b"a", 11), (b"b", 11), (b"a", 13)]
    twice, answered = repeated_lists(lists)
    assert twice == 2
    assert answered == {b"a": 13, b"b": 11}


def _sample(at: float, lag: int, reported: float, processed: float = 0.0,
            acknowledged: int = 0, rss: float = 300.0) -> Sample:
    return Sample(at, acknowledged, lag, reported, processed, rss)


def test_the_burst_soak_settles_at_the_steady_lag_or_two_seconds_of_it() -> None:
    assert _settled(steady_peak=50, rate=200) == 400     # commits trail: 2 s of the rate
    assert _settled(steady_peak=900, rate=200) == 900


def test_rates_skip_samples_whose_metrics_did_not_answer() -> None:
    samples = [_sample(1, 0, 0, processed=100), _sample(2, 0, 0, processed=-1),
               _sample(3, 0, 0, processed=400), _sample(5, 0, 0, processed=1_000)]
    assert _per_second(samples, "processed") == [(5, 300.0)]


def test_the_lag_alert_condition_wants_a_rising_lag() -> None:
    flat = [_sample(n, 20_000, 20_000) for n in range(15)]
    assert not any(_rising(flat))
    climbing = [_sample(n, 1_000 * n, 1_000 * n) for n in range(15)]
    assert _rising(climbing) == [False] * 10 + [True] * 5


def _report(**changes: object) -> dict[str, object]:
    report: dict[str, object] = {
        "worker_survived": True, "rss_mb": {"peak": 500.0, "limit": 1_000.0},
        "lag": {"peak": 40_000, "reported_peak": 38_000, "reported_share": 0.97},
        "caught_up_seconds_after_burst": 42.0, "lost": 0, "applied_twice": 0}
    report.update(changes)
    return report


def test_a_burst_soak_fails_on_each_broken_promise() -> None:
    assert _failures(_report()) == []
    assert _failures(_report(worker_survived=False)) == ["the worker exited"]
    assert "over the limit" in _failures(_report(rss_mb={"peak": 1_200.0, "limit": 1_000.0}))[0]
    assert "the lag the worker reported came to 36%" in _failures(
        _report(lag={"peak": 40_000, "reported_peak": 17_000, "reported_share": 0.36}))[0]
    assert _failures(_report(caught_up_seconds_after_burst=None)) == [
        "not caught up after the burst"]
    assert _failures(_report(lost=3)) == ["3 events lost, 0 applied twice"]


def test_a_worker_giving_up_a_stuck_transaction_exits_to_be_restarted() -> None:
    import subprocess
    import sys

    from app.errors import EXIT_STUCK

    done = subprocess.run([sys.executable, "-c", "import logging; logging.basicConfig(); "
                           "from app.worker.faust_compat import give_up; "
                           "give_up('3 changelog records not acknowledged after 60 s'); "
                           "print('not reached')"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == EXIT_STUCK
    assert "not reached" not in done.stdout
    assert "3 changelog records not acknowledged after 60 s under exactly-once" in done.stderr


def test_the_soak_restarts_a_worker_that_ended_on_its_own(tmp_path: Path) -> None:
    import subprocess

    from app.soak.crash import Member

    member = Member({}, tmp_path, "w0")
    member.process = subprocess.Popen(["sh", "-c", "exit 75"])
    member.process.wait()
    started: list[bool] = []
    member.start = lambda: started.append(True)  # type: ignore[method-assign]
    assert member.restart_if_exited()
    assert (member.exits, started) == ([75], [True])
    member.supervised = False          # during a fault the soak restarts it itself
    assert not member.restart_if_exited()


def test_a_lost_users_report_names_the_events_its_id_window_lacks() -> None:
    from app.core.state import UserState, seen_digest
    from app.soak.crash import missing_in_window

    applied = [n for n in range(3, 10) if n not in (5, 7)]   # 0-2 left the window
    state = UserState(seen=b"".join(seen_digest(f"u-{n}") for n in applied), read_to=(1, 90))
    offsets = [100 + 3 * n for n in range(10)]
    report = missing_in_window("u", state, offsets)
    # from the oldest id the window holds (3) to the newest sent: 5 and 7 are missing
    assert report == {"window_from": 3, "missing": [5, 7], "offsets": [115, 121],
                      "read_to": [1, 90]}
