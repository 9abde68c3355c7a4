"""Per-key state kept in the worker's RocksDB tables, and the pure functions that fold
validated records into it.

Every state value carries ``seen``: the last ``window`` records applied to that key, newest
last, each as 8 bytes (``seen_digest``: 64 bits of a hash of its ``event_id``), packed in
one bytes value (values written before hold a tuple of 11-character base64 tokens of the
same digests, or the ids themselves: both still count, and move to the packed form with the
key's next record). A record whose id is among them is a redelivered duplicate: it is
dropped and counted, never applied twice.
State values are encoded with msgpack (array-like: new fields may only be appended, with
defaults, so old values still decode).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import Struct

from app.contract.records import (
    Event,
    Feedback,
    ItemOp,
    ItemUpsert,
    Purchase,
    Search,
    UserProfile,
)
from app.core import consumed, sequence
from app.core.profile import EVENT_WEIGHTS, Interest, ProfileParams, add_signal

FloatArray = npt.NDArray[np.float32]


NOWHERE = (-1, -1)   # a state's ``read_to`` before any record with a known position


DIGEST_BYTES = 8


def seen_digest(event_id: str) -> bytes:
    """What ``seen`` keeps of an event id: 64 bits of its BLAKE2b hash (8 bytes packed,
    against 12 for the base64 token kept before and ~20-40 for an id: the id window was
    the largest part of a user's state). Two ids of a key's last ``window`` (128) share a
    digest with probability ~128 / 2**64 per record: a record would be dropped as a
    duplicate about once in 10**17 records."""
    return hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"),
                           digest_size=DIGEST_BYTES).digest()


def window_of(seen: bytes | tuple[str, ...]) -> list[bytes]:
    """A state's ``seen`` as digests, oldest first: the packed form split, or a tuple from
    before it (base64 tokens decoded; an id kept as itself is hashed)."""
    if isinstance(seen, bytes):
        return [seen[n:n + DIGEST_BYTES] for n in range(0, len(seen), DIGEST_BYTES)]
    return [_legacy_digest(entry) for entry in seen]


def _legacy_digest(entry: str) -> bytes:
    if len(entry) == 11:   # a token: the first 11 characters of the digest's base64url
        try:
            digest = base64.urlsafe_b64decode(entry + "=")
        except (ValueError, TypeError):
            digest = b""
        if len(digest) == DIGEST_BYTES and \
                base64.urlsafe_b64encode(digest)[:11].decode("ascii") == entry:
            return digest
    return seen_digest(entry)


class KeyState(Struct, array_like=True, frozen=True):
    """Base of every state value: the recent event ids of the key, newest last, as packed
    digests (``window_of``; a tuple of strings in values written before)."""

    seen: bytes | tuple[str, ...] = b""


class UserState(KeyState, array_like=True, frozen=True):
    """What a worker knows about one user from the `events` topic. Bounded: the id window,
    ``recent``, ``purchases``, ``consumed`` and ``sequence`` are capped (``ProfileParams``),
    the interest is one vector."""

    counts: dict[str, int] = {}
    first_ts: int = 0
    last_ts: int = 0
    interest: bytes = b""                    # float32 decayed, weighted sum of signals
    interest_weight: float = 0.0
    interest_ts: int = 0
    recent: tuple[tuple[str, str, int], ...] = ()   # (item id, event type, ts), newest last
    purchased: tuple[str, ...] = ()          # (states before ``purchases``: moved there)
    query: str = ""                          # the last search
    query_ts: int = 0
    consumed: bytes = b""                    # every item consumed (app.core.consumed)
    sequence: bytes = b""                    # the last item events, as the model reads them
    read_to: tuple[int, int] = NOWHERE       # (input partition, offset) applied up to
    # (time in ms, partition) of a request to forget the user, while input from before it
    # could still come (app.core.forgetting); (0, -1): none
    forgotten: tuple[int, int] = (0, -1)
    # every item purchased, hashed as the seen-set is (app.core.consumed; 4 bytes an item,
    # not the id): never recommended again, even when a request includes consumed items
    purchases: bytes = b""


class ShownItem(Struct, array_like=True, frozen=True):
    """One item of a remembered list: its id, its position (0 = first) and the ranker's
    unweighted features (ranking.FEATURES) as little-endian float16, 2 bytes a feature
    (``packed``; lists remembered before kept float64 ``features``, 9 bytes a feature in
    msgpack: those still decode and are read)."""

    item_id: str
    position: int
    features: tuple[float, ...] = ()
    packed: bytes = b""

    @classmethod
    def of(cls, item_id: str, position: int, features: Sequence[float]) -> ShownItem:
        return cls(item_id, position, packed=np.asarray(features, dtype="<f2").tobytes())

    def values(self) -> tuple[float, ...]:
        """The features, whichever way they were stored."""
        if self.packed:
            return tuple(np.frombuffer(self.packed, dtype="<f2").tolist())
        return self.features


class Shown(Struct, array_like=True, frozen=True):
    """A published list, as attribution needs it (app.core.attribution)."""

    rec_id: str
    model_version: str
    variant: str
    produced_at: int
    items: tuple[ShownItem, ...]


class FeedbackState(KeyState, array_like=True, frozen=True):
    """Per-user feedback counters (by type, and attributed/unattributed by reason) and the
    recently shown lists feedback is joined with (bounded: app.core.attribution)."""

    counts: dict[str, int] = {}
    last_ts: int = 0
    shown: tuple[Shown, ...] = ()
    read_to: tuple[int, int] = NOWHERE


class ProfileState(KeyState, array_like=True, frozen=True):
    """The newest known profile of a user."""

    profile: UserProfile | None = None
    read_to: tuple[int, int] = NOWHERE


class ItemState(KeyState, array_like=True, frozen=True):
    """The newest known version of a catalogue item; ``item`` is None once deleted."""

    item: ItemUpsert | None = None
    last_ts: int = 0
    read_to: tuple[int, int] = NOWHERE


class HasEventId(Protocol):
    @property
    def event_id(self) -> str: ...


S = TypeVar("S", bound=KeyState)
R = TypeVar("R", bound=HasEventId)


@dataclass(frozen=True, slots=True)
class Applied(Generic[S, R]):
    """The result of folding one key's batch: the new state, what was applied, and how many
    records were dropped as duplicates."""

    state: S
    applied: list[R]
    duplicates: int


def apply_batch(
    state: S, records: Sequence[R], window: int, fold: Callable[[S, R], S],
    positions: Sequence[tuple[int, int]] | None = None,
) -> Applied[S, R]:
    """Fold ``records`` (one key's, in offset order) into ``state``, skipping any whose
    ``event_id`` was seen within the last ``window`` ids (including earlier in this batch)
    and, given their input ``positions`` ((partition, offset) each), any at or before the
    position the state was applied up to (its ``read_to``) on the same partition: input
    read again after a fault, however far back its committed offset was (the id window
    covers only the last ``window`` events of a key, and a re-read of more used to apply
    the older ones twice). The id window still catches a record sent twice (a producer's
    retry: two offsets)."""
    seen = window_of(state.seen)
    known = set(seen)
    applied: list[R] = []
    duplicates = 0
    read_to: tuple[int, int] | None = getattr(state, "read_to", None)
    for n, record in enumerate(records):
        if positions is not None and read_to is not None:
            position = positions[n]
            if position[0] == read_to[0] and position[1] <= read_to[1]:
                duplicates += 1
                continue
            read_to = position   # in offset order: the newest so far
        digest = seen_digest(record.event_id)
        if digest in known:
            duplicates += 1
            continue
        known.add(digest)
        seen.append(digest)
        applied.append(record)
    state = fold_all(fold, state, applied)
    packed = b"".join(seen[-window:])
    if read_to is not None and positions is not None:
        return Applied(msgspec.structs.replace(state, seen=packed, read_to=read_to),
                       applied, duplicates)
    return Applied(msgspec.structs.replace(state, seen=packed), applied, duplicates)


def _bump(counts: dict[str, int], name: str) -> dict[str, int]:
    updated = dict(counts)
    updated[name] = updated.get(name, 0) + 1
    return updated


def fold_event(state: UserState, event: Event) -> UserState:
    """Count a user's event by type and track the span of their activity."""
    kind = type(event).__struct_config__.tag
    first = event.ts if state.first_ts == 0 else min(state.first_ts, event.ts)
    return msgspec.structs.replace(
        state,
        counts=_bump(state.counts, str(kind)),
        first_ts=first,
        last_ts=max(state.last_ts, event.ts),
    )


def fold_feedback(state: FeedbackState, feedback: Feedback) -> FeedbackState:
    return msgspec.structs.replace(
        state,
        counts=_bump(state.counts, feedback.type.value),
        last_ts=max(state.last_ts, feedback.ts),
    )


def fold_profile(state: ProfileState, profile: UserProfile) -> ProfileState:
    """Keep the profile with the newest event time (ties: the later record wins)."""
    if state.profile is not None and state.profile.ts > profile.ts:
        return state
    return msgspec.structs.replace(state, profile=profile)


def fold_item(state: ItemState, op: ItemOp) -> ItemState:
    """Apply an upsert or delete unless a newer version of the item was already applied."""
    if op.ts < state.last_ts:
        return state
    item = op if isinstance(op, ItemUpsert) else None
    return msgspec.structs.replace(state, item=item, last_ts=op.ts)


@dataclass(frozen=True)
class EventContext:
    """What folding an event needs beyond the state: item vectors from the catalogue, the
    batch's search queries already embedded, and the profile parameters."""

    item_vector: Callable[[str], FloatArray | None]
    query_vectors: Mapping[str, FloatArray]
    dimension: int
    params: ProfileParams = field(default_factory=ProfileParams)


def interest_of(state: UserState, dimension: int) -> Interest:
    if not state.interest:
        return Interest.empty(dimension)
    vector = np.frombuffer(state.interest, dtype="<f4").astype(np.float32)
    return Interest(vector, state.interest_weight, state.interest_ts)


class EventFold:
    """``fold_event`` plus the user's interest, recent items, purchases and last search:
    call it with one event, or ``many`` with a key's applied events of a batch (one
    implementation: a call is ``many`` of one event; folding a batch at once gives the state
    folding its events one by one gives, tested; the interest, recent items and seen-sets
    are unpacked once and packed once, not per event: a backlog batch holds ~100 events of
    a user)."""

    __slots__ = ("context",)

    def __init__(self, context: EventContext) -> None:
        self.context = context

    def __call__(self, state: UserState, event: Event) -> UserState:
        return self.many(state, (event,))

    def many(self, state: UserState, events: Sequence[Event]) -> UserState:
        """``events`` folded in order: what calling the fold on each in turn gives."""
        if not events:
            return state
        context = self.context
        params = context.params
        counts = dict(state.counts)
        first, last = state.first_ts, state.last_ts
        query, query_ts = state.query, state.query_ts
        stored = state.sequence
        recent = {entry[0]: entry for entry in state.recent}
        previous_ts = state.recent[-1][2] if state.recent else None
        items: list[str] = []
        bought: list[str] = []
        legacy, purchases = state.purchased, state.purchases
        interest: Interest | None = None
        for event in events:
            kind = str(type(event).__struct_config__.tag)
            counts[kind] = counts.get(kind, 0) + 1
            first = event.ts if first == 0 else min(first, event.ts)
            last = max(last, event.ts)
            if isinstance(event, Search):
                signal = context.query_vectors.get(event.query)
                if event.ts >= query_ts:
                    query, query_ts = event.query, event.ts
            else:
                item = event.item_id
                signal = context.item_vector(item)
                gap = None if previous_ts is None else event.ts - previous_ts
                stored = sequence.append(stored, item, kind, gap, params.sequence_size)
                recent.pop(item, None)   # (moved to the end: its newest event)
                recent[item] = (item, kind, event.ts)
                previous_ts = event.ts
                items.append(item)
                if legacy:   # ids kept before the hashes: moved over by the first item event
                    purchases = consumed.add(
                        purchases, (*legacy, item) if isinstance(event, Purchase) else legacy,
                        params.purchased_size)
                    legacy = ()
                elif isinstance(event, Purchase):
                    bought.append(item)
            if signal is not None:
                interest = add_signal(
                    interest if interest is not None
                    else interest_of(state, context.dimension),
                    signal, EVENT_WEIGHTS[kind], event.ts, params.half_life_ms)
        changes: dict[str, object] = {"counts": counts, "first_ts": first, "last_ts": last}
        if query_ts != state.query_ts or query != state.query:
            changes.update(query=query, query_ts=query_ts)
        if items:
            changes.update(
                sequence=stored, recent=tuple(list(recent.values())[-params.recent_size:]),
                consumed=consumed.add_each(state.consumed, items, params.consumed_size))
        if bought or legacy != state.purchased:
            changes.update(purchases=consumed.add_each(purchases, bought,
                                                       params.purchased_size), purchased=())
        if interest is not None:
            changes.update(interest=np.asarray(interest.vector, dtype="<f4").tobytes(),
                           interest_weight=interest.weight, interest_ts=interest.as_of)
        return msgspec.structs.replace(state, **changes)


def event_fold(context: EventContext) -> EventFold:
    """The user state's fold over events, with ``context`` (``EventFold``)."""
    return EventFold(context)


def fold_all(fold: Callable[[S, R], S], state: S, records: Sequence[R]) -> S:
    """``records`` folded into ``state`` in order: in one call when the fold folds many
    at once (``EventFold.many``), else one by one."""
    many = getattr(fold, "many", None)
    if many is not None:
        folded: S = many(state, records)
        return folded
    for record in records:
        state = fold(state, record)
    return state


T = TypeVar("T")


class StateCodec(Generic[T]):
    """msgpack encoding of one state type, with the empty state for a missing key."""

    __slots__ = ("_decoder", "_encoder", "empty")

    def __init__(self, state_type: type[T]) -> None:
        self._decoder = msgspec.msgpack.Decoder(state_type)
        self._encoder = msgspec.msgpack.Encoder()
        self.empty: T = state_type()

    def decode(self, raw: bytes | None) -> T:
        return self.empty if raw is None else self._decoder.decode(raw)

    def encode(self, state: T) -> bytes:
        return self._encoder.encode(state)
