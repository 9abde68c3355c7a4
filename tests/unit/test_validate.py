from __future__ import annotations

import msgspec
import pytest

from app.contract.records import (
    Feedback,
    ItemDelete,
    ItemUpsert,
    Purchase,
    Search,
    UserProfile,
    View,
)
from app.contract.samples import bad_event_samples, good_view
from app.contract.validate import Limits, Reason, Rejection, validators

NOW = 1_800_000_000_000
CHECK = validators(Limits(max_payload_bytes=4096))


@pytest.mark.parametrize("sample", bad_event_samples("u1", "e1", 4096), ids=lambda s: s.reason)
def test_each_bad_sample_is_rejected_with_its_reason(sample) -> None:
    outcome = CHECK.events(sample.key, sample.value, NOW)
    assert isinstance(outcome, Rejection)
    assert outcome.reason == sample.reason
    assert outcome.detail


def test_good_view_decodes_to_a_typed_record() -> None:
    outcome = CHECK.events(b"u1", good_view("u1", "e1", "i1", 1_700_000_000_000), NOW)
    assert outcome == View(v=1, event_id="e1", user_id="u1", ts=1_700_000_000_000, item_id="i1")


def test_every_event_type_is_accepted() -> None:
    base = {"v": 1, "event_id": "e", "user_id": "u", "ts": 1_700_000_000_000}
    bodies = [
        ({**base, "type": "search", "query": "space opera", "result_item_ids": ["a", "b"]}, Search),
        ({**base, "type": "add_to_cart", "item_id": "i", "quantity": 2}, object),
        ({**base, "type": "purchase", "item_id": "i", "price": 9.5, "currency": "EUR"}, Purchase),
    ]
    for body, kind in bodies:
        outcome = CHECK.events(b"u", msgspec.json.encode(body), NOW)
        assert not isinstance(outcome, Rejection), outcome
        assert isinstance(outcome, kind)


def test_unknown_fields_are_tolerated_for_forward_compatibility() -> None:
    body = {"v": 1, "type": "view", "event_id": "e", "user_id": "u", "ts": 1_700_000_000_000,
            "item_id": "i", "added_in_a_later_minor": True}
    assert isinstance(CHECK.events(b"u", msgspec.json.encode(body), NOW), View)


def test_items_feedback_users() -> None:
    ts = 1_700_000_000_000
    up = {"v": 1, "op": "upsert", "event_id": "x", "item_id": "i", "ts": ts, "title": "Alien"}
    assert isinstance(CHECK.items(b"i", msgspec.json.encode(up), NOW), ItemUpsert)
    down = {"v": 1, "op": "delete", "event_id": "y", "item_id": "i", "ts": ts}
    assert isinstance(CHECK.items(b"i", msgspec.json.encode(down), NOW), ItemDelete)
    fb = {"v": 1, "type": "click", "event_id": "f", "user_id": "u", "rec_id": "r",
          "item_id": "i", "ts": ts, "position": 0}
    assert isinstance(CHECK.feedback(b"u", msgspec.json.encode(fb), NOW), Feedback)
    prof = {"v": 1, "event_id": "p", "user_id": "u", "ts": ts, "age_band": "25-34"}
    assert isinstance(CHECK.users(b"u", msgspec.json.encode(prof), NOW), UserProfile)
    # items are keyed by item id, not user id
    assert CHECK.items(b"u", msgspec.json.encode(up), NOW).reason == Reason.KEY_MISMATCH


def test_missing_key_is_a_key_mismatch() -> None:
    outcome = CHECK.events(None, good_view("u1", "e1", "i1", 1_700_000_000_000), NOW)
    assert isinstance(outcome, Rejection)
    assert outcome.reason == Reason.KEY_MISMATCH


@pytest.mark.parametrize(("ts", "ok"), [
    (631_152_000_000, True),             # the earliest accepted time
    (631_151_999_999, False),
    (NOW + 86_400_000, True),            # the largest accepted clock skew
    (NOW + 86_400_001, False),
    (-1, False),
])
def test_timestamp_bounds(ts: int, ok: bool) -> None:
    outcome = CHECK.events(b"u1", good_view("u1", "e1", "i1", ts), NOW)
    assert (not isinstance(outcome, Rejection)) is ok


def test_oversize_is_checked_before_parsing() -> None:
    outcome = CHECK.events(b"u1", b"x" * 5000, NOW)
    assert isinstance(outcome, Rejection)
    assert outcome.reason == Reason.OVERSIZE


def test_a_deeply_nested_record_is_rejected_not_raised() -> None:
    # ~2 KB nested 1,000 deep: it exhausted the decoder's recursion and crashed the agent
    value = b'{"x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    outcome = validators(Limits()).events(b"u", value, NOW)
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.TOO_DEEP


def test_brackets_inside_strings_are_not_nesting() -> None:
    body = {"v": 1, "type": "search", "event_id": "e", "user_id": "u", "ts": 1_700_000_000_000,
            "query": '[{"' * 150 + '\\"[[['}
    assert isinstance(CHECK.events(b"u", msgspec.json.encode(body), NOW), Search)


def test_a_key_that_is_not_utf8_is_rejected_even_when_its_lossy_decoding_matches() -> None:
    # the 70-byte item tombstone that became a catalogue delete every worker died on
    value = b'{"v":1,"op":"delete","event_id":"e","item_id":"\\ufffd","ts":1700000000000}'
    outcome = CHECK.items(b"\xff", value, NOW)
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.BAD_KEY
    event = good_view("\ufffd", "e1", "i1", 1_700_000_000_000)
    for key in (b"\xff", b"\xfe"):
        assert CHECK.events(key, event, NOW).reason is Reason.BAD_KEY  # type: ignore[union-attr]
    assert isinstance(CHECK.events("\ufffd".encode(), event, NOW), View)


def test_the_validator_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    check = validators(Limits())

    def broken(value: bytes) -> object:
        raise MemoryError("a decoder failing in a way nobody foresaw")

    monkeypatch.setattr(check.events, "_decoder", type("D", (), {"decode": staticmethod(broken)})())
    outcome = check.events(b"u", good_view("u", "e", "i", 1_700_000_000_000), NOW)
    assert outcome == Rejection(Reason.PROCESSING_ERROR, "validator: MemoryError")
