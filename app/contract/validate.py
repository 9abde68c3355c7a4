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
import numpy as np

from app.contract.records import ID_MAX_CHARS, Event, Feedback, ItemOp, UserProfile

T = TypeVar("T")


class Reason(StrEnum):
    """Why an input record was rejected. Bounded: used as a metric label."""

    OVERSIZE = "oversize"
    TOO_DEEP = "too_deep"
    EMPTY = "empty"
    MALFORMED_JSON = "malformed_json"
    WRONG_TYPE = "wrong_type"
    MISSING_FIELD = "missing_field"
    INVALID_VALUE = "invalid_value"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_VERSION = "unknown_version"
    BAD_TIMESTAMP = "bad_timestamp"
    KEY_MISMATCH = "key_mismatch"
    BAD_KEY = "bad_key"
    PROCESSING_ERROR = "processing_error"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str
    exception: str = ""   # the exception's class, for a processing error


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied after decoding; see the settings of the same names."""

    max_payload_bytes: int = 65_536
    max_depth: int = 16
    min_event_time: int = 631_152_000_000
    max_clock_skew_ms: int = 86_400_000


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def json_depth(value: bytes, limit: int) -> int:
    """How deep ``value``'s arrays and objects nest, counted without parsing it (brackets
    inside strings do not count); 0 when it holds no more than ``limit`` brackets at all,
    which cannot nest deeper than that (one C-speed count: every ordinary record). Checked
    before a record reaches the decoder, whose recursion a deep enough record exhausts."""
    if value.count(b"[") + value.count(b"{") <= limit:
        return 0
    codes = np.frombuffer(_STRING.sub(b'""', value), dtype=np.uint8)
    steps = ((codes == 91).astype(np.int8) + (codes == 123) - (codes == 93)
             - (codes == 125))
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


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
        """The record, or why it is rejected. Never raises, whatever the bytes."""
        try:
            return self._check(key, value, now_ms)
        except Exception as exc:  # noqa: BLE001 - no record may escape as an exception
            return Rejection(Reason.PROCESSING_ERROR, f"validator: {type(exc).__name__}")

    def _check(self, key: bytes | None, value: bytes | None, now_ms: int) -> T | Rejection:
        if not value:
            return Rejection(Reason.EMPTY, "empty record value")
        if len(value) > self.limits.max_payload_bytes:
            return Rejection(
                Reason.OVERSIZE,
                f"{len(value)} bytes > limit {self.limits.max_payload_bytes}",
            )
        depth = json_depth(value, self.limits.max_depth)
        if depth > self.limits.max_depth:
            return Rejection(Reason.TOO_DEEP,
                             f"nested {depth} deep > limit {self.limits.max_depth}")
        try:
            record = self._decoder.decode(value)
        except msgspec.DecodeError as exc:
            return Rejection(classify(exc), str(exc)[:500])
        except RecursionError:
            return Rejection(Reason.TOO_DEEP, "nested too deep to decode")
        ts: int = getattr(record, "ts")  # noqa: B009 - every input struct has ts
        if ts < self.limits.min_event_time or ts > now_ms + self.limits.max_clock_skew_ms:
            return Rejection(Reason.BAD_TIMESTAMP, f"event time {ts} ms is out of range")
        if key is None:
            return Rejection(Reason.KEY_MISMATCH, f"the record key must be {self.key_field}")
        expected: str = getattr(record, self.key_field)
        if key != expected.encode():
            try:
                key.decode()
            except UnicodeDecodeError:
                return Rejection(Reason.BAD_KEY, "the record key is not valid UTF-8")
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


def forget_rejection(key: bytes | None) -> Rejection | None:
    """Why a tombstone on ``users`` (a request to forget the user keyed by it) cannot be
    applied, or ``None`` when its key is a user id (valid UTF-8, 1 to 128 characters)."""
    if not key:
        return Rejection(Reason.BAD_KEY, "a tombstone on users needs the user id as its key")
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return Rejection(Reason.BAD_KEY, "the record key is not valid UTF-8")
    if len(text) > ID_MAX_CHARS:
        return Rejection(Reason.BAD_KEY, f"the record key is over {ID_MAX_CHARS} characters")
    return None


def validators(limits: Limits) -> Validators:
    return Validators(
        events=Validator[Event](Event, "user_id", limits),
        items=Validator[ItemOp](ItemOp, "item_id", limits),
        feedback=Validator[Feedback](Feedback, "user_id", limits),
        users=Validator[UserProfile](UserProfile, "user_id", limits),
    )
