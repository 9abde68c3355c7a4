"""Validation of input records: raw Kafka bytes in, a typed record or a rejection out.

Nothing here raises on bad input: every failure becomes a :class:`Rejection` with a reason
from a small, fixed set (it is a Prometheus label) and a human-readable detail (it travels in
a dead-letter header, in Kafka only, never in logs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

import msgspec

from app.contract.records import Event, Feedback, ItemOp, UserProfile

T = TypeVar("T")


class Reason(StrEnum):
    """Why an input record was rejected. Bounded: used as a metric label."""

    OVERSIZE = "oversize"
    EMPTY = "empty"
    MALFORMED_JSON = "malformed_json"
    WRONG_TYPE = "wrong_type"
    MISSING_FIELD = "missing_field"
    INVALID_VALUE = "invalid_value"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_VERSION = "unknown_version"
    BAD_TIMESTAMP = "bad_timestamp"
    KEY_MISMATCH = "key_mismatch"
    PROCESSING_ERROR = "processing_error"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied after decoding; see the settings of the same names."""

    max_payload_bytes: int = 65_536
    min_event_time: int = 631_152_000_000
    max_clock_skew_ms: int = 86_400_000


_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_TAG_FIELDS = frozenset({".type", ".op"})


def classify(error: msgspec.DecodeError) -> Reason:
    """Map a msgspec decode error to a rejection reason."""
    if not isinstance(error, msgspec.ValidationError):
        return Reason.MALFORMED_JSON
    message = str(error)
    match = _PATH.search(message)
    path = match.group("path") if match else ""
    if message.startswith("Object missing required field"):
        return Reason.MISSING_FIELD
    if path == ".v":
        return Reason.UNKNOWN_VERSION
    if path in _TAG_FIELDS and message.startswith("Invalid"):
        return Reason.UNKNOWN_TYPE
    if message.startswith("Expected `") and ("` >" in message or "` <" in message):
        return Reason.INVALID_VALUE
    if message.startswith("Expected `") and (" of length" in message or "matching" in message):
        return Reason.INVALID_VALUE
    if message.startswith("Expected "):
        return Reason.WRONG_TYPE
    return Reason.INVALID_VALUE


class Validator(Generic[T]):
    """Validates one input topic's records.

    ``key_field`` names the payload field that must equal the Kafka record key, so that
    every record of a user (or item) lands on the partition that holds its state.
    """

    __slots__ = ("_decoder", "key_field", "limits")

    def __init__(self, record_type: type[T] | object, key_field: str, limits: Limits) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(record_type)
        self.key_field = key_field
        self.limits = limits

    def __call__(self, key: bytes | None, value: bytes | None, now_ms: int) -> T | Rejection:
        if not value:
            return Rejection(Reason.EMPTY, "empty record value")
        if len(value) > self.limits.max_payload_bytes:
            return Rejection(
                Reason.OVERSIZE,
                f"{len(value)} bytes > limit {self.limits.max_payload_bytes}",
            )
        try:
            record = self._decoder.decode(value)
        except msgspec.DecodeError as exc:
            return Rejection(classify(exc), str(exc)[:500])
        ts: int = getattr(record, "ts")  # noqa: B009 - every input struct has ts
        if ts < self.limits.min_event_time or ts > now_ms + self.limits.max_clock_skew_ms:
            return Rejection(Reason.BAD_TIMESTAMP, f"event time {ts} ms is out of range")
        expected: str = getattr(record, self.key_field)
        if key is None or key.decode("utf-8", "replace") != expected:
            return Rejection(
                Reason.KEY_MISMATCH, f"record key must equal {self.key_field} of the payload"
            )
        return record


@dataclass(frozen=True, slots=True)
class Validators:
    """One validator per input topic."""

    events: Validator[Event]
    items: Validator[ItemOp]
    feedback: Validator[Feedback]
    users: Validator[UserProfile]


def validators(limits: Limits) -> Validators:
    return Validators(
        events=Validator[Event](Event, "user_id", limits),
        items=Validator[ItemOp](ItemOp, "item_id", limits),
        feedback=Validator[Feedback](Feedback, "user_id", limits),
        users=Validator[UserProfile](UserProfile, "user_id", limits),
    )
