"""Property-based tests (hypothesis) of every decoder a record from Kafka reaches and of the
folds that turn records into state: whatever the bytes, nothing raises where the worker
does not expect it, and the folds keep their bounds and their counts."""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.contract.deadletter import deadletter_headers, fit, read_headers
from app.contract.fuzz import INPUT_TOPICS, MUTATIONS, hostile_records
from app.contract.records import ID_MAX_CHARS, Event, Purchase, Search, View
from app.contract.validate import (
    Limits,
    Reason,
    Rejection,
    forget_rejection,
    json_depth,
    validators,
)
from app.core import consumed, sequence
from app.core.artefacts import ArtefactStore
from app.core.catalogue import CatalogueEntry
from app.core.profile import ProfileParams
from app.core.recommender import Catalogue
from app.core.serving import apply_catalogue_record
from app.core.state import (
    EventContext,
    FeedbackState,
    ItemState,
    ProfileState,
    StateCodec,
    UserState,
    apply_batch,
    event_fold,
    window_of,
)

NOW = 1_800_000_000_000
TS = 1_700_000_000_000
LIMITS = Limits()
CHECK = validators(LIMITS)
PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# text that can be an id: no lone surrogates (JSON cannot carry them, UTF-8 cannot encode them)
ID_TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=ID_MAX_CHARS)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)
KEYS = st.none() | st.binary(max_size=200)


# --- the validators ------------------------------------------------------------------------

@PROPERTY
@given(topic=st.sampled_from(INPUT_TOPICS), key=KEYS, value=st.none() | st.binary(max_size=2000))
def test_the_validator_of_every_topic_answers_any_bytes(topic: str, key: bytes | None,
                                                       value: bytes | None) -> None:
    outcome = getattr(CHECK, topic)(key, value, NOW)
    if isinstance(outcome, Rejection):
        assert outcome.reason in set(Reason) - {Reason.PROCESSING_ERROR}
        assert outcome.detail


@PROPERTY
@given(topic=st.sampled_from(INPUT_TOPICS), key=KEYS, document=JSON_VALUES)
def test_the_validator_answers_any_json_document(topic: str, key: bytes | None,
                                                 document: Any) -> None:
    outcome = getattr(CHECK, topic)(key, json.dumps(document).encode(), NOW)
    assert isinstance(outcome, Rejection)   # no document of this shape is a record
    assert outcome.reason != Reason.PROCESSING_ERROR


@PROPERTY
@given(seed=st.integers(0, 2**32), name=st.sampled_from(sorted(MUTATIONS)))
def test_every_mutation_of_a_valid_record_gets_an_answer(seed: int, name: str) -> None:
    record = next(hostile_records(1, seed, valid_share=1.0))
    assert record.value is not None
    assert not record.mutations
    body = msgspec.json.decode(record.value)
    key, value = MUTATIONS[name](random.Random(seed), body, record.key, record.value)
    if record.topic == "users" and value is None:   # a request to forget the key's user
        refused = forget_rejection(key)
        assert refused is None or refused.reason == Reason.BAD_KEY
        return
    outcome = getattr(CHECK, record.topic)(key, value, NOW)
    if isinstance(outcome, Rejection):
        assert outcome.reason != Reason.PROCESSING_ERROR


def _view(user: str, event_id: str, item: str, ts: int) -> View:
    return View(v=1, event_id=event_id, user_id=user, ts=ts, item_id=item)


EVENTS = st.one_of(
    st.builds(_view, ID_TEXT, ID_TEXT, ID_TEXT, st.integers(TS, NOW)),
    st.builds(lambda u, e, q, ts: Search(v=1, event_id=e, user_id=u, ts=ts, query=q),
              ID_TEXT, ID_TEXT, st.text(st.characters(exclude_categories=("Cs",)),
                                        min_size=1, max_size=512), st.integers(TS, NOW)),
    st.builds(lambda u, e, i, p, ts: Purchase(v=1, event_id=e, user_id=u, ts=ts, item_id=i,
                                              price=p),
              ID_TEXT, ID_TEXT, ID_TEXT, st.floats(0, 1e9), st.integers(TS, NOW)),
)


@PROPERTY
@given(event=EVENTS)
def test_every_valid_event_decodes_to_itself(event: Event) -> None:
    raw = msgspec.json.encode(event)
    assert CHECK.events(event.user_id.encode(), raw, NOW) == event
    # and with any other key it is a key mismatch, never accepted
    assert isinstance(CHECK.events(event.user_id.encode() + b"x", raw, NOW), Rejection)


# --- nesting, keys, dead letters -------------------------------------------------------------

def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@PROPERTY
@given(document=st.recursive(
    st.text(alphabet="[]{}\"\\ab") | st.integers(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("[]{}ab"), inner,
                                                                 max_size=3),
    max_leaves=60))
def test_json_depth_is_the_nesting_depth(document: Any) -> None:
    raw = json.dumps(document).encode()
    assert json_depth(raw, 0) == _depth(document)
    assert json_depth(raw, _depth(document)) in (0, _depth(document))


@PROPERTY
@given(key=st.none() | st.binary(max_size=600))
def test_a_forget_key_is_accepted_exactly_when_it_is_a_user_id(key: bytes | None) -> None:
    try:
        text = key.decode() if key else ""
        is_id = 1 <= len(text) <= ID_MAX_CHARS
    except UnicodeDecodeError:
        is_id = False
    refused = forget_rejection(key)
    assert (refused is None) == is_id
    assert refused is None or refused.reason == Reason.BAD_KEY


@PROPERTY
@given(key=st.none() | st.binary(max_size=5000), value=st.none() | st.binary(max_size=50_000),
       room=st.integers(64, 20_000))
def test_a_dead_letter_fits_its_room_and_keeps_what_it_can(key: bytes | None,
                                                          value: bytes | None,
                                                          room: int) -> None:
    cut_key, cut_value, sizes = fit(key, value, room)
    assert len(cut_key or b"") + len(cut_value or b"") <= room
    assert (key or b"").startswith(cut_key or b"")
    assert (value or b"").startswith(cut_value or b"")
    assert (cut_key is None) == (key is None)
    assert (cut_value is None) == (value is None)
    whole = len(key or b"") + len(value or b"") <= room
    assert (sizes == []) == whole
    if whole:
        assert (cut_key, cut_value) == (key, value)


@PROPERTY
@given(reason=st.sampled_from(list(Reason)), detail=st.text(), topic=ID_TEXT,
       partition=st.integers(0, 10_000), offset=st.integers(0, 2**62))
def test_dead_letter_headers_read_back(reason: Reason, detail: str, topic: str, partition: int,
                                      offset: int) -> None:
    headers = read_headers(deadletter_headers(Rejection(reason, detail), topic, partition,
                                              offset, NOW))
    assert headers["reason"] == reason.value
    assert (headers["topic"], headers["partition"], headers["offset"]) == \
        (topic, str(partition), str(offset))


# --- the followers of compacted topics ------------------------------------------------------

DIM = 8


def _entry(item_id: str, vector: np.ndarray) -> bytes:
    return msgspec.msgpack.encode(CatalogueEntry(
        item_id, "t", "c", "", None, True, "t", vector.astype("<f4").tobytes(), "m", TS))


@PROPERTY
@given(records=st.lists(st.tuples(KEYS, st.none() | st.binary(max_size=300)), max_size=20))
def test_the_catalogue_follower_survives_any_record(records: list[tuple[bytes | None,
                                                                         bytes | None]]) -> None:
    catalogue = Catalogue(DIM)
    apply_catalogue_record(catalogue, b"kept", _entry("kept", np.eye(DIM)[0]))
    for key, value in records:
        with contextlib.suppress(Exception):
            apply_catalogue_record(catalogue, key, value)
    assert len(catalogue.index) == len(catalogue.items)
    scores = [score for _, score in catalogue.index.search(np.eye(DIM, dtype=np.float32)[0], 5)]
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("vector", [np.full(DIM, np.nan), np.zeros(DIM), np.full(DIM, 1e30),
                                    np.r_[np.inf, np.zeros(DIM - 1)]])
def test_a_catalogue_vector_that_is_not_a_unit_vector_is_refused(vector: np.ndarray) -> None:
    catalogue = Catalogue(DIM)
    with pytest.raises(ValueError, match="unit vector"):
        apply_catalogue_record(catalogue, b"x", _entry("x", vector))
    assert len(catalogue.index) == 0


@PROPERTY
@given(records=st.lists(st.tuples(
    st.none() | st.sampled_from([b"behaviour-head", b"behaviour:v1", b"behaviour:v1/0",
                                 b"behaviour:v1/x", b"behaviour:\xff"]) | st.binary(max_size=30),
    st.none() | st.binary(max_size=300)), max_size=20))
def test_the_models_follower_survives_any_record(records: list[tuple[bytes | None,
                                                                      bytes | None]]) -> None:
    store = ArtefactStore()
    for key, value in records:
        with contextlib.suppress(Exception):
            store.apply(key, value)
    store.served()
    for version in list(store.artefacts):
        store.complete(version)


@PROPERTY
@given(raw=st.binary(max_size=500))
def test_a_stored_state_either_decodes_or_raises_a_decode_error(raw: bytes) -> None:
    for state_type in (UserState, FeedbackState, ProfileState, ItemState):
        with contextlib.suppress(msgspec.DecodeError):
            StateCodec(state_type).decode(raw)


# --- the folds ------------------------------------------------------------------------------

PARAMS = ProfileParams(recent_size=5, purchased_size=3, consumed_size=7, sequence_size=6)
ITEM_VECTORS = {f"i{n}": np.eye(DIM, dtype=np.float32)[n % DIM] for n in range(12)}
FOLD = event_fold(EventContext(ITEM_VECTORS.get, {}, DIM, PARAMS))


def _event(kind: str, event_id: str, item: str, ts: int) -> Event:
    if kind == "search":
        return Search(v=1, event_id=event_id, user_id="u", ts=ts, query=item)
    if kind == "purchase":
        return Purchase(v=1, event_id=event_id, user_id="u", ts=ts, item_id=item, price=1.0)
    return View(v=1, event_id=event_id, user_id="u", ts=ts, item_id=item)


USER_EVENTS = st.lists(st.builds(
    _event, st.sampled_from(["view", "view", "purchase", "search"]),
    st.sampled_from([f"e{n}" for n in range(30)]), st.sampled_from([f"i{n}" for n in range(15)]),
    st.integers(TS, TS + 10**9)), max_size=60)


QUERY_FOLD = event_fold(EventContext(ITEM_VECTORS.get, {
    f"i{n}": np.eye(DIM, dtype=np.float32)[(n + 1) % DIM] for n in range(0, 15, 2)}, DIM, PARAMS))


@PROPERTY
@given(before=USER_EVENTS, batch=USER_EVENTS, legacy=st.lists(
    st.sampled_from([f"i{n}" for n in range(15)]), max_size=4),
    overfull=st.lists(st.integers(0, 2**32 - 1), max_size=12))
def test_folding_a_batch_at_once_is_folding_its_events_one_by_one(
        before: list[Event], batch: list[Event], legacy: list[str], overfull: list[int]
) -> None:
    """``EventFold.many`` (what apply_batch calls) gives the state the per-event fold
    gives, from any state: legacy purchased ids, a seen-set longer than its limit (a limit
    lowered since it was stored), searches with and without an embedded query."""
    state = UserState()
    for event in before:
        state = QUERY_FOLD(state, event)
    state = msgspec.structs.replace(
        state, purchased=tuple(legacy),
        consumed=state.consumed + np.array(overfull, dtype="<u4").tobytes())
    one_by_one = state
    for event in batch:
        one_by_one = QUERY_FOLD(one_by_one, event)
    assert QUERY_FOLD.many(state, batch) == one_by_one


@PROPERTY
@given(batches=st.lists(USER_EVENTS, max_size=4), window=st.integers(1, 40))
def test_the_event_fold_keeps_its_bounds_and_counts_every_applied_event(
        batches: list[list[Event]], window: int) -> None:
    codec = StateCodec(UserState)
    state = UserState()
    applied = duplicates = 0
    for batch in batches:
        result = apply_batch(state, batch, window, FOLD)
        assert len(result.applied) + result.duplicates == len(batch)
        ids = [e.event_id for e in result.applied]
        assert len(ids) == len(set(ids))   # nothing applied twice within a batch
        applied += len(result.applied)
        duplicates += result.duplicates
        state = codec.decode(codec.encode(result.state))   # through the changelog's bytes
        assert state == result.state
    assert sum(state.counts.values()) == applied
    assert len(window_of(state.seen)) <= window
    assert len(state.recent) <= PARAMS.recent_size
    assert consumed.size(state.purchases) <= PARAMS.purchased_size
    assert consumed.size(state.consumed) <= PARAMS.consumed_size
    assert len(state.sequence) <= PARAMS.sequence_size * sequence.STORED.itemsize
    assert len({r[0] for r in state.recent}) == len(state.recent)
    if state.interest:
        vector = np.frombuffer(state.interest, dtype="<f4")
        assert vector.shape == (DIM,)
        assert np.isfinite(vector).all()
    if applied:
        assert state.first_ts <= state.last_ts


@PROPERTY
@given(items=st.lists(st.sampled_from([f"i{n}" for n in range(30)]), max_size=60),
       limit=st.integers(1, 16))
def test_the_consumed_set_is_bounded_and_holds_what_was_just_consumed(items: list[str],
                                                                     limit: int) -> None:
    held = b""
    for item in items:
        held = consumed.add(held, (item,), limit)
        assert consumed.contains(held, [item]).all()
        assert consumed.size(held) <= limit
    if len(set(items)) <= limit:   # nothing forgotten: everything is in it, once
        assert consumed.contains(held, items).all()
        assert consumed.size(held) == len(set(items))
        assert consumed.add(b"", items, limit) == held   # one call, the same set
    # the set of hashes a list checks against says the same as the bytes
    others = [f"i{n}" for n in range(40)]
    ordered = consumed.sorted_hashes(consumed.held(held))
    assert consumed.in_sorted(ordered, consumed.hashes(others)).tolist() == \
        consumed.contains(held, others).tolist()
