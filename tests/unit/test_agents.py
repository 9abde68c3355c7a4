"""The agents' batch step without Kafka: fakes stand in for Faust's events, table and topic."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import msgspec
from faust.exceptions import PartitionsMismatch

from app.contract.deadletter import read_headers
from app.contract.records import ItemOp, ItemUpsert, UserProfile, View
from app.contract.samples import good_view
from app.contract.validate import Limits, validators
from app.core.state import (
    FeedbackState,
    ItemState,
    ProfileState,
    StateCodec,
    UserState,
    fold_event,
    fold_feedback,
    fold_item,
    fold_profile,
)
from app.metrics import Metrics
from app.worker.agents import (
    BrokerWatch,
    DeadLetters,
    Flow,
    ForgetGuard,
    Forgetting,
    Health,
    KeyResult,
    process_batch,
    process_until_done,
)

TS = 1_700_000_000_000


@dataclass
class Message:
    key: bytes | None
    value: bytes | None
    topic: str = "events"
    partition: int = 0
    offset: int = 0
    timestamp: float = TS / 1000   # Kafka's, in seconds as Faust gives it


@dataclass
class Event:
    message: Message


@dataclass
class Topic:
    sent: list[dict[str, object]] = field(default_factory=list)

    async def send(self, **kwargs: object) -> None:
        self.sent.append(kwargs)


def _batch(records: list[tuple[bytes | None, bytes | None]]) -> list[Event]:
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


def test_a_record_too_large_to_forward_is_dead_lettered_cut_with_its_sizes() -> None:
    # 1,040,000 bytes: under the broker's limit, over the producer's; it crashed the agent
    metrics, topic, table = Metrics.create(), Topic(), {}
    huge = b'{"v":1,' + b" " * 1_040_000 + b"}"
    batch = _batch([(b"a", huge), (b"a", good_view("a", "a-1", "i", TS))])
    deadletters = DeadLetters(topic, metrics, max_bytes=262_144)
    asyncio.run(process_batch(_flow(table), batch, deadletters, metrics, 16))
    assert StateCodec(UserState).decode(table[b"a"]).counts == {"view": 1}
    [sent] = topic.sent
    headers = read_headers(sent["headers"])
    assert headers["reason"] == "oversize"
    assert (headers["key_bytes"], headers["value_bytes"]) == ("1", str(len(huge)))
    assert sent["key"] == b"a"
    assert sent["value"] == huge[:262_143]


class FailingTopic(Topic):
    """A dead-letter topic whose sends fail ``failures`` times, then work."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def send(self, **kwargs: object) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        await super().send(**kwargs)


def test_a_dead_letter_is_counted_once_sent_and_a_failed_batch_is_done_again() -> None:
    metrics, topic, table = Metrics.create(), FailingTopic(failures=2), {}
    batch = _batch([(b"a", b"{broken"), (b"a", good_view("a", "a-1", "i", TS))])
    asyncio.run(process_until_done(_flow(table), batch, DeadLetters(topic, metrics), metrics,
                                   16, Health(), ))
    assert len(topic.sent) == 1   # sent once it could be; nothing counted for the failures
    assert metrics.registry.get_sample_value(
        "streamrec_deadletters_total", {"topic": "events", "reason": "malformed_json"}) == 1
    assert metrics.registry.get_sample_value(
        "streamrec_processing_errors_total", {"topic": "events-batch"}) == 2
    assert StateCodec(UserState).decode(table[b"a"]).counts == {"view": 1}


class FlakyTable(dict):  # type: ignore[type-arg]
    """A table whose writes fail as Faust's do while a changelog is not seen yet."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise PartitionsMismatch("changelog has 0 partitions, source 4")
        super().__setitem__(key, value)


def test_a_table_not_writable_yet_is_waited_for_never_dead_lettered() -> None:
    metrics, topic, table = Metrics.create(), Topic(), FlakyTable(failures=3)
    health = Health()
    readiness: list[bool] = []

    async def run() -> None:
        task = asyncio.create_task(process_batch(
            _flow(table), _batch([(b"a", good_view("a", "a-1", "i", TS))]),
            DeadLetters(topic, metrics), metrics, 16, health))
        while not task.done():
            readiness.append(health.ok)
            await asyncio.sleep(0.01)
        await task

    asyncio.run(run())
    assert topic.sent == []
    assert StateCodec(UserState).decode(table[b"a"]).counts == {"view": 1}
    assert False in readiness   # not ready while held up
    assert health.ok            # ready after
    assert metrics.registry.get_sample_value(
        "streamrec_retries_total", {"topic": "events"}) == 3


def test_a_processing_error_names_the_exception_class_in_a_header() -> None:
    metrics, topic, table = Metrics.create(), Topic(), {}

    def fold(state: UserState, event: View) -> UserState:
        raise KeyError("deterministic")

    batch = _batch([(b"a", good_view("a", "a-1", "i", TS))])
    asyncio.run(process_batch(_flow(table, fold), batch, DeadLetters(topic, metrics), metrics, 16))
    headers = read_headers(topic.sent[0]["headers"])
    assert (headers["reason"], headers["exception"]) == ("processing_error", "KeyError")


def test_a_key_whose_records_are_all_redelivered_is_written_again() -> None:
    """A killed worker's local table can hold a state its changelog never got (the
    offsets behind it uncommitted): when those records come again, they are duplicates to
    the local state, and the state is written so that the changelog catches up."""
    metrics, topic = Metrics.create(), Topic()
    writes: list[bytes] = []

    class Table(dict):  # type: ignore[type-arg]
        def __setitem__(self, key: bytes, value: bytes) -> None:
            writes.append(key)
            super().__setitem__(key, value)

    table = Table()
    batch = _batch([(b"a", good_view("a", "a-1", "i", TS))])
    asyncio.run(process_batch(_flow(table), batch, DeadLetters(topic, metrics), metrics, 16))
    asyncio.run(process_batch(_flow(table), batch, DeadLetters(topic, metrics), metrics, 16))
    assert writes == [b"a", b"a"]
    assert StateCodec(UserState).decode(table[b"a"]).counts == {"view": 1}


def _item(item_id: str, event_id: str) -> bytes:
    return msgspec.json.encode(ItemUpsert(v=1, event_id=event_id, item_id=item_id, ts=TS,
                                          title=f"Title of {item_id}"))


def test_items_are_published_again_when_redelivered_and_a_failed_publish_is_retried() -> None:
    """The catalogue is published from the items flow's ``after``: a first delivery that
    wrote the item's state and stopped before publishing it (a rebalance, a crash) must not
    leave the item out of the catalogue for good, nor may a failed publish."""
    metrics, topic, table = Metrics.create(), Topic(), {}
    published: list[bytes] = []
    failures = [1]

    async def publish(results: list[KeyResult[ItemState, ItemOp]]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("producer not ready")
        published.extend(r.key for r in results if r.state.item is not None)

    flow = Flow[ItemState, ItemOp]("items", validators(Limits()).items,
                                   StateCodec(ItemState), fold_item, table, after=publish,
                                   publishes_state=True)
    batch = _batch([(b"i1", _item("i1", "e1")), (b"i2", _item("i2", "e2"))])
    asyncio.run(process_until_done(flow, batch, DeadLetters(topic, metrics), metrics, 16,
                                   Health()))
    assert published == [b"i1", b"i2"]      # the retry found duplicates and published them
    assert metrics.registry.get_sample_value(
        "streamrec_processing_errors_total", {"topic": "items-batch"}) == 1
    asyncio.run(process_batch(flow, batch[:1], DeadLetters(topic, metrics), metrics, 16))
    assert published == [b"i1", b"i2", b"i1"]   # redelivered: published again
    assert topic.sent == []


def test_a_flow_that_does_not_publish_state_skips_duplicates_and_counts_a_failed_after(
        ) -> None:
    metrics, topic, table = Metrics.create(), Topic(), {}
    seen: list[int] = []

    async def after(results: list[KeyResult[UserState, View]]) -> None:
        seen.append(len(results))
        raise ConnectionError("recommendations topic unreachable")

    flow = Flow[UserState, View]("events", validators(Limits()).events,
                                 StateCodec(UserState), fold_event, table, after=after)
    batch = _batch([(b"a", good_view("a", "a-1", "i", TS))])
    for _ in range(2):
        asyncio.run(process_until_done(flow, batch, DeadLetters(topic, metrics), metrics, 16,
                                       Health()))
    assert seen == [1]   # once: the redelivery is a duplicate, its list was already due
    assert metrics.registry.get_sample_value(
        "streamrec_processing_errors_total", {"topic": "events-after"}) == 1


class Table(dict):  # type: ignore[type-arg]
    """A table that records deletes and, as Faust's, deletes a missing key without error
    (Faust writes the changelog tombstone either way)."""

    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[bytes] = []

    def __delitem__(self, key: bytes) -> None:
        self.deleted.append(key)
        self.pop(key, None)


def _profile(user: str, event_id: str, ts: int = TS) -> bytes:
    return msgspec.json.encode({"v": 1, "event_id": event_id, "user_id": user, "ts": ts,
                                "age_band": "25-34"})


def _users_flow(profiles: Table, others: tuple[Table, ...],
                after: list[list[bytes]]) -> Flow[ProfileState, UserProfile]:
    async def forgotten(keys: list[bytes]) -> None:
        after.append(keys)

    return Flow("users", validators(Limits()).users, StateCodec(ProfileState), fold_profile,
                profiles, forgetting=Forgetting((profiles, *others), forgotten))


def test_a_tombstone_on_users_forgets_the_user_in_every_table_in_batch_order() -> None:
    metrics, topic = Metrics.create(), Topic()
    profiles, states, lists = Table(), Table(), Table()
    states[b"a"] = states[b"b"] = lists[b"a"] = b"kept until forgotten"
    after: list[list[bytes]] = []
    batch = _batch([
        (b"a", _profile("a", "a-1")),
        (b"b", _profile("b", "b-1")),
        (b"a", None),                      # forget a: its profile above goes with it
        (b"c", None),                      # a user never seen: tombstones all the same
        (b"b", _profile("b", "b-2", TS + 1)),
        (b"\xff", None),                   # not a user id
        (None, None),
    ])
    asyncio.run(process_batch(_users_flow(profiles, (states, lists), after), batch,
                              DeadLetters(topic, metrics), metrics, 16))
    assert all(b"a" not in table for table in (profiles, states, lists))
    assert states[b"b"] == b"kept until forgotten"
    assert b"b" in profiles
    for table in (profiles, states, lists):
        assert table.deleted == [b"a", b"c"]
    assert after == [[b"a", b"c"]]
    assert metrics.registry.get_sample_value("streamrec_users_forgotten_total") == 2
    assert [read_headers(s["headers"])["reason"] for s in topic.sent] == ["bad_key", "bad_key"]


def test_every_tombstone_is_counted_even_two_for_one_user_in_a_batch() -> None:
    metrics, topic, profiles = Metrics.create(), Topic(), Table()
    batch = _batch([(b"a", _profile("a", "a-1")), (b"a", None), (b"a", None), (b"b", None)])
    asyncio.run(process_batch(_users_flow(profiles, (), []), batch,
                              DeadLetters(topic, metrics), metrics, 16))
    assert metrics.registry.get_sample_value("streamrec_users_forgotten_total") == 3
    # the profile before the tombstones was accepted, then forgotten: counted, not lost
    assert metrics.registry.get_sample_value(
        "streamrec_input_records_total", {"topic": "users", "outcome": "accepted"}) == 1
    assert profiles.deleted == [b"a", b"b"]
    assert topic.sent == []


def test_a_profile_after_the_tombstone_in_one_batch_starts_a_new_state() -> None:
    metrics, topic, profiles = Metrics.create(), Topic(), Table()
    batch = _batch([(b"a", None), (b"a", _profile("a", "a-2"))])
    asyncio.run(process_batch(_users_flow(profiles, (), []), batch,
                              DeadLetters(topic, metrics), metrics, 16))
    assert StateCodec(ProfileState).decode(profiles[b"a"]).profile is not None
    assert profiles.deleted == [b"a"]


def test_tombstones_elsewhere_stay_dead_letters_and_redaction_keeps_headers_only() -> None:
    metrics, topic, table = Metrics.create(), Topic(), {}
    batch = _batch([(b"a", None), (b"a", b"{broken")])
    deadletters = DeadLetters(topic, metrics, redact=frozenset({"events"}))
    asyncio.run(process_batch(_flow(table), batch, deadletters, metrics, 16))
    assert [read_headers(s["headers"])["reason"] for s in topic.sent] == ["empty",
                                                                        "malformed_json"]
    broken = topic.sent[1]
    assert (broken["key"], broken["value"]) == (None, None)
    headers = read_headers(broken["headers"])
    assert (headers["redacted"], headers["key_bytes"], headers["value_bytes"]) == ("1", "1",
                                                                                  "7")
    assert headers["offset"] == "1"


def test_the_longest_stall_is_shown_for_one_to_two_windows_then_let_go() -> None:
    from app.worker.agents import LongestStall

    stall = LongestStall(window=60.0)
    assert stall.observe(0.001, 0.0) == 0.001
    assert stall.observe(0.250, 10.0) == 0.250     # a 250 ms stall
    assert stall.observe(0.002, 59.0) == 0.250
    assert stall.observe(0.003, 61.0) == 0.250     # next window: still shown
    assert stall.observe(0.001, 119.0) == 0.250
    assert stall.observe(0.004, 122.0) == 0.004    # two windows on: gone
    assert stall.observe(0.001, 400.0) == 0.001    # after a gap, nothing carried over


def test_a_record_off_its_keys_partition_is_sent_there_and_not_applied_here() -> None:
    from app.contract.partitioning import partition_of

    metrics, topic, table = Metrics.create(), Topic(), {}
    rerouted: list[tuple[bytes | None, int]] = []

    async def reroute(event: Event, partition: int) -> None:
        rerouted.append((event.message.key, partition))

    flow = Flow[UserState, View]("events", validators(Limits()).events,
                                 StateCodec(UserState), fold_event, table,
                                 partitions=4, reroute=reroute)
    home = partition_of(b"a", 4)
    batch = [Event(Message(b"a", good_view("a", "a-1", "i", TS), partition=home)),
             Event(Message(b"a", good_view("a", "a-2", "i", TS), partition=(home + 1) % 4))]
    asyncio.run(process_batch(flow, batch, DeadLetters(topic, metrics), metrics, 16))
    assert rerouted == [(b"a", home)]
    assert StateCodec(UserState).decode(table[b"a"]).counts == {"view": 1}
    assert metrics.registry.get_sample_value(
        "streamrec_misrouted_total", {"topic": "events"}) == 1
    assert topic.sent == []   # not a dead letter: it is valid, only misplaced


def test_the_partition_of_a_key_is_the_one_aiokafkas_producer_picks() -> None:
    """aiokafka's default partitioner is the Java client's (murmur2): the one the replay,
    the tests and the contract's producers use."""
    from aiokafka.partitioner import DefaultPartitioner

    from app.contract.partitioning import partition_of

    producer = DefaultPartitioner()
    for count in (1, 4, 12):
        every = list(range(count))
        for n in range(300):
            key = f"user-{n}".encode()
            assert partition_of(key, count) == producer(key, every, every)


def test_the_broker_watch_holds_readiness_after_two_unanswered_probes() -> None:
    answers = [False, False, False, True]

    async def probe() -> None:
        if not answers.pop(0):
            raise ConnectionError("broker gone")

    metrics, health = Metrics.create(), Health()
    watch = BrokerWatch(probe, health, metrics, misses=2)
    assert not asyncio.run(watch.check())
    assert health.ok   # one miss: maybe a slow answer
    assert not asyncio.run(watch.check())
    assert not health.ok
    assert metrics.registry.get_sample_value("streamrec_broker_reachable") == 0
    assert not asyncio.run(watch.check())
    assert asyncio.run(watch.check())
    assert health.ok
    assert metrics.registry.get_sample_value("streamrec_broker_reachable") == 1


def _stamped(records: list[tuple[bytes | None, bytes | None, int]]) -> list[Event]:
    """Events with Kafka timestamps (ms), offsets in order."""
    return [Event(Message(k, v, offset=i, timestamp=ts / 1000))
            for i, (k, v, ts) in enumerate(records)]


def test_a_forgotten_users_input_from_before_the_request_never_builds_their_state_again(
        ) -> None:
    """Read again after a crash, or late behind a backlog: a forgotten user's events from
    before the tombstone are dropped and counted; the user coming back after it is served
    anew; once the guard has passed the marker goes (a tombstone) or, if the user came
    back, the mark does."""
    metrics, topic = Metrics.create(), Topic()
    profiles, states = Table(), Table()
    codec = StateCodec(UserState)
    guard = ForgetGuard(states, guard_ms=10**12, metrics=metrics)
    users = Flow("users", validators(Limits()).users, StateCodec(ProfileState), fold_profile,
                 profiles, forgetting=Forgetting((profiles,), None, guard))
    events = Flow("events", validators(Limits()).events, StateCodec(UserState), fold_event,
                  states, guard=guard, sweeps=True)
    deadletters = DeadLetters(topic, metrics)
    asyncio.run(process_batch(events, _stamped([
        (b"a", good_view("a", "a-1", "i", TS), TS), (b"b", good_view("b", "b-1", "i", TS), TS),
    ]), deadletters, metrics, 16))
    asyncio.run(process_batch(users, _stamped([(b"a", None, TS + 10), (b"b", None, TS + 10)]),
                              deadletters, metrics, 16))
    assert codec.decode(states[b"a"]) == UserState(forgotten=(TS + 10, 0))   # a marker only
    assert len(guard.markers) == 2
    # a's first event read again, one late from before the request, one after it
    asyncio.run(process_batch(events, _stamped([
        (b"a", good_view("a", "a-1", "i", TS), TS),
        (b"a", good_view("a", "a-0", "j", TS - 5), TS + 10),
        (b"a", good_view("a", "a-2", "k", TS + 20), TS + 20),
    ]), deadletters, metrics, 16))
    state = codec.decode(states[b"a"])
    assert state.counts == {"view": 1}
    assert state.first_ts == state.last_ts == TS + 20       # the event after the request
    value = metrics.registry.get_sample_value
    assert value("streamrec_input_records_total",
                 {"topic": "events", "outcome": "forgotten"}) == 2
    assert b"b" in states                                      # its guard has not passed
    assert b"b" not in states.deleted
    guard.guard_ms = 0
    asyncio.run(process_batch(events, _stamped([(b"c", good_view("c", "c-1", "i", TS), TS)]),
                              deadletters, metrics, 16))
    assert states.deleted == [b"b"]                            # only the marker: deleted
    assert codec.decode(states[b"a"]).forgotten == (0, -1)     # came back: unmarked
    assert codec.decode(states[b"a"]).counts == {"view": 1}
    assert len(guard.markers) == 0
    assert topic.sent == []


def test_a_forgotten_users_feedback_from_before_the_request_is_dropped_too() -> None:
    metrics, states, feedback = Metrics.create(), Table(), Table()
    guard = ForgetGuard(states, guard_ms=10**12, metrics=metrics)
    states[b"a"] = StateCodec(UserState).encode(UserState(forgotten=(TS, 0)))
    flow = Flow("feedback", validators(Limits()).feedback, StateCodec(FeedbackState),
                fold_feedback, feedback, guard=guard)
    click = msgspec.json.encode({"v": 1, "event_id": "f-1", "type": "click", "user_id": "a",
                                 "rec_id": "r", "item_id": "i", "ts": TS})
    asyncio.run(process_batch(flow, _stamped([(b"a", click, TS - 1)]),
                              DeadLetters(Topic(), metrics), metrics, 16))
    assert b"a" not in feedback
    asyncio.run(process_batch(flow, _stamped([(b"a", click, TS + 1)]),
                              DeadLetters(Topic(), metrics), metrics, 16))
    assert b"a" in feedback
