"""Faust's decode-only ceiling, for `streamrec bench pipeline`: the same intake as a worker
(raw bytes, batches from `take_events`), nothing else. What a Faust worker cannot exceed on
this machine; the reference the pipeline's throughput is reported against.

    python -m app.worker.ceiling     # reads the same STREAMREC_* settings as a worker
"""

from __future__ import annotations

from typing import Any

from app.settings import get_settings
from app.worker.declarations import _app
from app.worker.main import _new_loop, faust_worker


def main() -> None:
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

    app.agent(events, name="streamrec.ceiling")(drain)
    faust_worker(app, _new_loop(), settings).execute_from_commandline()


if __name__ == "__main__":
    main()
