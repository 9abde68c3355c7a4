"""The dead-letter record: the original key and value bytes, untouched, with the reason and
the source position in headers (the Kafka Connect convention), so any client, kcat included,
can read them and a fixed record can be re-produced as it was."""

from __future__ import annotations

from collections.abc import Iterable

from app.contract.validate import Rejection

HEADER_PREFIX = "streamrec.dlq."
REASON = HEADER_PREFIX + "reason"
DETAIL = HEADER_PREFIX + "detail"
TOPIC = HEADER_PREFIX + "topic"
PARTITION = HEADER_PREFIX + "partition"
OFFSET = HEADER_PREFIX + "offset"
RECEIVED_AT = HEADER_PREFIX + "received_at"


def deadletter_headers(
    rejection: Rejection, topic: str, partition: int, offset: int, received_ms: int
) -> list[tuple[str, bytes]]:
    return [
        (REASON, rejection.reason.value.encode()),
        (DETAIL, rejection.detail.encode("utf-8", "replace")),
        (TOPIC, topic.encode()),
        (PARTITION, str(partition).encode()),
        (OFFSET, str(offset).encode()),
        (RECEIVED_AT, str(received_ms).encode()),
    ]


def read_headers(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """The dead-letter headers of a record, as text, without the prefix."""
    found: dict[str, str] = {}
    for name, value in headers:
        if name.startswith(HEADER_PREFIX):
            found[name.removeprefix(HEADER_PREFIX)] = (value or b"").decode("utf-8", "replace")
    return found
