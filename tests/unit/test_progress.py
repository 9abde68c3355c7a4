"""Progress of long commands: rich bars on a terminal, timed plain lines in a log."""

from __future__ import annotations

import io
import time

import pytest

from app.progress import eta_text, phases, step


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_phase_at_most_every_interval_and_at_the_end() -> None:
    out = io.StringIO()
    with phases(out, every=3600) as (say, advance):
        say("starting")
        for done in range(0, 101):
            advance("events", done, 100)
        advance("events", 100, 100)          # told twice it ended: one last line
    lines = out.getvalue().splitlines()
    assert lines[0] == "starting"
    assert lines[1].startswith("events: 0/100")
    assert lines[2].startswith("events: 100/100 (")
    assert len(lines) == 3


def test_a_plain_line_says_the_rate_and_time_left() -> None:
    assert eta_text(25, 100, 5.0) == "25/100 (5.0/s, 5 s, ETA 0:15)"
    assert eta_text(0, 100, 0.0) == "0/100"
    assert eta_text(100, 100, 0.0) == "100/100"
    assert eta_text(100, 100, 4.0) == "100/100 (25.0/s, 4 s)"


def test_a_step_is_a_phase_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    with phases(out, every=0) as (_, advance), step(advance, "quantizing"):
        time.sleep(0.01)
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == \
        ["quantizing: 0/1", "quantizing: 1/1"]


def test_a_terminal_gets_rich_bars_with_eta() -> None:
    out = _Terminal()
    with phases(out) as (say, advance):
        say("hello")
        advance("events", 50, 200)
        advance("events", 200, 200)
    text = out.getvalue()
    assert "hello" in text
    assert "events" in text
    assert "200/200" in text
    assert "100%" in text
