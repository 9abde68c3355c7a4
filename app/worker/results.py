"""What the agents hand to the pipeline and the feedback loop, and the failure counting
all three share: a small module below them, so neither imports the other's module."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.core.state import HasEventId, KeyState
from app.logs import OncePer
from app.metrics import Metrics

log = logging.getLogger("app.worker.agents")   # where these lines were always logged
_failures = OncePer(60.0)   # one line per stage, exception and place a minute, with counts

S = TypeVar("S", bound=KeyState)
R = TypeVar("R", bound=HasEventId)


@dataclass(frozen=True, slots=True)
class KeyResult(Generic[S, R]):
    """One key's outcome in a batch: its new state, the records applied, its last event,
    and its state before the batch."""

    key: bytes
    state: S
    applied: list[R]
    last_event: Any
    before: S


def count_failure(metrics: Metrics, stage: str, exc: BaseException) -> None:
    """Count every failure; log it (the exception's type and place only, never its message:
    it may quote payload or ids) at most once a minute per stage, type and place, with the
    number of the same failures not logged since (the counter has them all)."""
    metrics.processing_errors.labels(stage).inc()
    frames = traceback.extract_tb(exc.__traceback__)
    where = (frames[-1].filename, frames[-1].lineno) if frames else ("?", 0)
    held = _failures.allow((stage, type(exc).__name__, where))
    if held is None:
        return
    more = f" (and {held} more since the last such line)" if held else ""
    log.error("%s failed: %s at %s:%s%s", stage, type(exc).__name__, where[0], where[1], more)
