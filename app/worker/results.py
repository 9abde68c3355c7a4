"""What the agents hand to the pipeline and the feedback loop, and the failure counting
all three share: a small module below them, so neither imports the other's module."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.core.state import HasEventId, KeyState
from app.metrics import Metrics

log = logging.getLogger("app.worker.agents")   # where these lines were always logged

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
    """Count and log a failure: the exception's type and place only, never its message
    (it may quote payload or ids)."""
    metrics.processing_errors.labels(stage).inc()
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    log.error("%s failed: %s at %s:%s", stage, type(exc).__name__, frame.filename, frame.lineno)
