"""The agents' batch step without Kafka: fakes stand in for Faust's events, table and topic."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import msgspec

from app.contract.deadletter import read_headers
from app.contract.records import View
from app.contract.samples import good_view
from app.contract.validate import Limits, validators
from app.core.state import StateCodec, UserState, fold_event
from app.metrics import Metrics
from app.worker.agents import DeadLetters, Flow, process_batch

TS = 1_700_000_000_000


@dataclass
class Message:
    key: bytes | None
    value: bytes | None
    topic: str = "events"
    partition: int = 0
    offset: int = 0


@dataclass
class Event:
    message: Message


@dataclass
class Topic:
    sent: list[dict[str, object]] = field(default_factory=list)

    async def send(self, **kwargs: object) -> None:
        self.sent.append(kwargs)


def _batch(records: list[tuple[bytes | None, bytes]]) -> list[Event]:
    return [Event(Message(k, v, offset=i)) for i, (k, v) in enumerate(records)]


def _flow(table: dict[bytes, bytes], fold=fold_event) -> Flow[UserState, View]:
    check = validators(Limits())
    return Flow("events", check.events, StateCodec(UserState), fold, table)


def test_a_batch_is_validated_deduplicated_and_folded_per_key() -> None:
    metrics, topic, table = Metrics.create(), Topic(), {}
    batch = _batch([
        (b"a", good_view("a", "a-1", "i", TS)),
        (b"a", b"{broken"),
        (b"b", good_view("b", "b-1", "i", TS)),
        (b"a", good_view("a", "a-1", "i", TS)),  # redelivered
        (b"a", good_view("a", "a-2", "i", TS + 1)),
    ])
    asyncio.run(process_batch(_flow(table), batch, DeadLetters(topic, metrics), metrics, 16))
    codec = StateCodec(UserState)
    assert codec.decode(table[b"a"]).counts == {"view": 2}
    assert codec.decode(table[b"b"]).counts == {"view": 1}
    value = metrics.registry.get_sample_value
    assert value("streamrec_input_records_total", {"topic": "events", "outcome": "accepted"}) == 3
    assert value("streamrec_input_records_total", {"topic": "events", "outcome": "duplicate"}) == 1
    assert [read_headers(s["headers"])["reason"] for s in topic.sent] == ["malformed_json"]
    assert topic.sent[0]["value"] == b"{broken"


def test_a_failing_key_is_dead_lettered_and_the_others_go_on() -> None:
    metrics, topic, table = Metrics.create(), Topic(), {}

    def fold(state: UserState, event: View) -> UserState:
        if event.user_id == "poison":
            raise ValueError("boom")
        return fold_event(state, event)

    batch = _batch([
        (b"poison", good_view("poison", "p-1", "i", TS)),
        (b"ok", good_view("ok", "o-1", "i", TS)),
        (b"poison", good_view("poison", "p-2", "i", TS)),
    ])
    asyncio.run(process_batch(_flow(table, fold), batch, DeadLetters(topic, metrics), metrics, 16))
    assert b"poison" not in table
    assert StateCodec(UserState).decode(table[b"ok"]).counts == {"view": 1}
    reasons = [read_headers(s["headers"]) for s in topic.sent]
    assert [r["reason"] for r in reasons] == ["processing_error", "processing_error"]
    assert {r["offset"] for r in reasons} == {"0", "2"}
    assert reasons[0]["detail"] == "ValueError"  # the type only: no payload in the detail
    assert metrics.registry.get_sample_value(
        "streamrec_processing_errors_total", {"topic": "events"}) == 1
    assert msgspec.json.decode(topic.sent[0]["value"])["user_id"] == "poison"
