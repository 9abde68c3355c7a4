"""Example records: well-formed ones per topic, and one malformed record per rejection reason.

The docs quote them, the demo injects the bad ones (labelled as injected), and the tests
produce them with a plain Kafka client and expect each reason back from the dead-letter
topic.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from app.contract.validate import Reason

_EVENT = {"v": 1, "type": "view", "event_id": "e-1", "user_id": "u-1", "ts": 1_700_000_000_000,
          "item_id": "i-1"}


_DROP = object()  # marks a field to leave out


@dataclass(frozen=True, slots=True)
class BadSample:
    reason: Reason
    key: bytes | None
    value: bytes


def _event(**changes: object) -> bytes:
    body = {**_EVENT, **changes}
    return msgspec.json.encode({k: v for k, v in body.items() if v is not _DROP})



def bad_event_samples(user_id: str, event_id: str, max_payload_bytes: int) -> list[BadSample]:
    """One malformed `events` record per reason, for ``user_id`` (all keyed by it)."""
    key = user_id.encode()

    def ev(**changes: object) -> bytes:
        return _event(user_id=user_id, event_id=event_id, **changes)

    return [
        BadSample(Reason.MALFORMED_JSON, key, b'{"v": 1, "type": "view", "user_id": '),
        BadSample(Reason.EMPTY, key, b""),
        BadSample(Reason.OVERSIZE, key, ev(context={"pad": "x" * max_payload_bytes})),
        BadSample(Reason.WRONG_TYPE, key, ev(ts="yesterday")),
        BadSample(Reason.MISSING_FIELD, key, ev(item_id=_DROP)),
        BadSample(Reason.INVALID_VALUE, key, ev(type="purchase", price=-5.0)),
        BadSample(Reason.UNKNOWN_TYPE, key, ev(type="teleport")),
        BadSample(Reason.UNKNOWN_VERSION, key, ev(v=2)),
        BadSample(Reason.BAD_TIMESTAMP, key, ev(ts=4_102_444_800_000)),  # year 2100
        BadSample(Reason.KEY_MISMATCH, b"somebody-else", ev()),
        # a key that is not UTF-8 (its lossy decoding would have matched the payload's id)
        BadSample(Reason.BAD_KEY, b"\xff", _event(user_id="\ufffd", event_id=event_id)),
        # nested deeper than any record of the contract: the decoder's recursion is not a
        # limit to reach (2 KB of brackets exhausted it)
        BadSample(Reason.TOO_DEEP, key, ev(context={"x": 0})[:-1]
                  + b',"deep":' + b"[" * 1000 + b"]" * 1000 + b"}"),
    ]


def good_view(user_id: str, event_id: str, item_id: str, ts: int) -> bytes:
    return _event(user_id=user_id, event_id=event_id, item_id=item_id, ts=ts)
