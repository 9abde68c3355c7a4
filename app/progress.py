"""Progress of long commands (replay, eval, export-model, the soaks): a rich bar per phase on
standard error, with its rate, elapsed time and ETA, when that is a terminal; otherwise (a
log file, CI) a plain line per phase at most every ``every`` seconds and when it ends, with
the same figures, so a log shows the work moving too."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

Say = Callable[[str], None]
Advance = Callable[[str, int, int], None]


def quiet(phase: str, done: int, of: int) -> None:
    """An ``Advance`` that shows nothing (library calls, tests)."""


def eta_text(done: int, of: int, seconds: float) -> str:
    """``done/of`` with the rate and the time left at that rate, for a plain line."""
    if seconds <= 0 or done <= 0:
        return f"{done:,}/{of:,}"
    rate = done / seconds
    left = (of - done) / rate
    eta = f", ETA {int(left) // 60}:{int(left) % 60:02d}" if done < of else ""
    return f"{done:,}/{of:,} ({rate:,.1f}/s, {seconds:.0f} s{eta})"


@dataclass
class _PlainPhases:
    out: TextIO
    every: float
    started: dict[str, float] = field(default_factory=dict)
    shown: dict[str, float] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def advance(self, phase: str, done: int, of: int) -> None:
        now = time.monotonic()
        first = phase not in self.started
        began = self.started.setdefault(phase, now)
        if self.shown.get(phase) == float("inf"):
            return                               # its last line is out already
        if done < of and not first and now - self.shown[phase] < self.every:
            return
        self.shown[phase] = float("inf") if done >= of else now
        self.say(f"{phase}: {eta_text(done, of, now - began)}")


@contextlib.contextmanager
def phases(out: TextIO | None = None, every: float = 5.0) -> Iterator[tuple[Say, Advance]]:
    """Yields ``say`` (a line, above the bars) and ``advance(phase, done, of)``: a bar per
    phase, made when first advanced."""
    stream = out if out is not None else sys.stderr
    if not stream.isatty():
        plain = _PlainPhases(stream, every)
        yield plain.say, plain.advance
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=Console(file=stream), transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def advance(phase: str, done: int, of: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=of)
            bar.update(tasks[phase], completed=done, total=of)

        yield bar.console.print, advance


@contextlib.contextmanager
def step(advance: Advance, phase: str) -> Iterator[None]:
    """One indivisible piece of work shown as a phase of one step: its bar (or line) ends
    when the work does, with the time it took."""
    advance(phase, 0, 1)
    yield
    advance(phase, 1, 1)
