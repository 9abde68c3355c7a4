"""How every StreamRec process logs: one format, the configured level, aiokafka at warning.

Workers configure it themselves rather than through Faust's worker: at warning level and
above Faust sets the root logger to DEBUG for its terminal spinner, so every library's
debug call builds a record nobody reads (aiokafka's fetcher alone was ~4% of a worker's
samples at the benchmark's half load)."""

from __future__ import annotations

import logging

FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
