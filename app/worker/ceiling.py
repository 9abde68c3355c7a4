"""Faust's decode-only ceiling, for `streamrec bench pipeline`: the raw bytes of every event
in batches from Faust's own ``take_events``, nothing else. What a Faust worker reading
through Faust's streams cannot exceed on this machine; the reference the pipeline's
throughput is reported against.

With ``intake=True`` (``app.worker.intake_only``), the same job reads through StreamRec's own
intake instead (``take_batches``: the stream's channel read in bulk, a batch acked once the
next is asked for): what StreamRec's worker costs before it does any work.

    python -m app.worker.ceiling       # reads the same STREAMREC_* settings as a worker
    python -m app.worker.intake_only
"""

from __future__ import annotations

from typing import Any

from app.settings import get_settings
from app.worker.declarations import _app
from app.worker.faust_compat import deliveries_run_inline, take_batches, unprocessed
from app.worker.main import _new_loop, faust_worker


def main(intake: bool = False) -> None:
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app: Any = _app(settings)
    events = app.topic(settings.topic_events, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw", allow_empty=True)

    async def drain(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_max,
                                              settings.batch_within_seconds):
            for event in batch:
                _ = event.message.value

    def waiting(processed: dict[Any, int]) -> int:   # the worker's rule for growing batches
        return unprocessed(app, settings.topic_events, processed)

    async def drain_intake(stream: Any) -> None:
        async for batch in take_batches(stream, settings.batch_max,
                                        settings.batch_within_seconds,
                                        settings.batch_backlog_seconds, waiting):
            for event in batch:
                _ = event.message.value

    app.agent(events, name="streamrec.ceiling")(drain_intake if intake else drain)
    loop = _new_loop()   # before the consumer is made: it binds to the current loop
    if intake:
        deliveries_run_inline(app.consumer)
    faust_worker(app, loop, settings).execute_from_commandline()


if __name__ == "__main__":
    main()
