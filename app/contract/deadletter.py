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
EXCEPTION = HEADER_PREFIX + "exception"
KEY_BYTES = HEADER_PREFIX + "key_bytes"        # the original sizes, on a truncated record
VALUE_BYTES = HEADER_PREFIX + "value_bytes"
REDACTED = HEADER_PREFIX + "redacted"            # "1": key and value left out on purpose


def deadletter_headers(
    rejection: Rejection, topic: str, partition: int, offset: int, received_ms: int
) -> list[tuple[str, bytes]]:
    headers = [
        (REASON, rejection.reason.value.encode()),
        (DETAIL, rejection.detail.encode("utf-8", "replace")),
        (TOPIC, topic.encode()),
        (PARTITION, str(partition).encode()),
        (OFFSET, str(offset).encode()),
        (RECEIVED_AT, str(received_ms).encode()),
    ]
    if rejection.exception:
        headers.append((EXCEPTION, rejection.exception.encode()))
    return headers


def fit(key: bytes | None, value: bytes | None, max_bytes: int
        ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """A rejected record's key and value cut to ``max_bytes`` together, so that it can be
    forwarded (a record under the broker's limit can be over the producer's: left whole,
    it could not be dead-lettered at all), with headers giving the original sizes when
    anything was cut. The key keeps at most a 64th of the room, the value the rest."""
    key_size, value_size = len(key or b""), len(value or b"")
    if key_size + value_size <= max_bytes:
        return key, value, []
    key_room = min(key_size, max_bytes // 64)
    value_room = max_bytes - key_room
    return (None if key is None else key[:key_room],
            None if value is None else value[:value_room],
            [(KEY_BYTES, str(key_size).encode()), (VALUE_BYTES, str(value_size).encode())])


def redacted(key: bytes | None, value: bytes | None
             ) -> tuple[None, None, list[tuple[str, bytes]]]:
    """A rejected record of a personal topic as its dead letter keeps it when redaction is
    on: no key, no value, the original sizes and a marker in headers."""
    return None, None, [(KEY_BYTES, str(len(key or b"")).encode()),
                        (VALUE_BYTES, str(len(value or b"")).encode()), (REDACTED, b"1")]


def read_headers(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """The dead-letter headers of a record, as text, without the prefix."""
    found: dict[str, str] = {}
    for name, value in headers:
        if name.startswith(HEADER_PREFIX):
            found[name.removeprefix(HEADER_PREFIX)] = (value or b"").decode("utf-8", "replace")
    return found
