"""How every StreamRec process logs: one format, the configured level, aiokafka at warning.

Workers configure it themselves rather than through Faust's worker: at warning level and
above Faust sets the root logger to DEBUG for its terminal spinner, so every library's
debug call builds a record nobody reads (aiokafka's fetcher alone was ~4% of a worker's
samples at the benchmark's half load)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))


class OncePer:
    """Rate limit for repeated log lines: a cause (any hashable) is let through at once,
    then at most once per ``seconds``; what was held back in between is counted and
    handed to the next line let through, so a flood of one failure reads as a few lines
    with counts, and a new cause is never held back by an old one."""

    def __init__(self, seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def allow(self, cause: Hashable) -> int | None:
        """None: hold this line back. Otherwise log it, saying how many lines of the same
        cause were held back since the last one (0: none)."""
        now = self._clock()
        last = self._last.get(cause)
        if last is not None and now - last < self.seconds:
            self._held[cause] = self._held.get(cause, 0) + 1
            return None
        self._last[cause] = now
        return self._held.pop(cause, 0)
