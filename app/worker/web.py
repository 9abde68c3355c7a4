"""The worker's HTTP views: Prometheus metrics, liveness and readiness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.metrics import Metrics
from app.worker.declarations import Declarations


def is_ready(app: Any) -> bool:
    """Ready once partitions are assigned and table recovery has finished."""
    recovery = app.tables.recovery
    return bool(
        not app.rebalancing and recovery.completed.is_set() and app.consumer.assignment()
    )


def attach(decl: Declarations, metrics: Metrics,
           ready: Callable[[], bool] = lambda: True) -> None:
    """``ready`` adds a condition of the pipeline (the catalogue is loaded)."""
    app = decl.app

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(
            generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        ok = is_ready(app) and ready()
        return web.json({"ready": ok}, status=200 if ok else 503)
