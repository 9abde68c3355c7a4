"""Thin agents: they take batches of raw records from Kafka and hand them to pure functions.

Each input topic is a :class:`Flow`: validate every record (rejections go to the dead-letter
topic), group the valid ones by key, fold each key's records into its state with the
duplicate filter, write each key's state once per batch. Nothing here raises on bad input;
an unexpected error while folding one key sends that key's records to the dead-letter topic
(reason ``processing_error``, the exception's class in a header) and the batch goes on.
A transient failure (the broker, or a table whose changelog is not writable yet) is no
reason to throw a valid record away: that key is retried with back-off, the worker reports
itself not ready meanwhile, and a batch is acknowledged only once every record in it is
applied or dead-lettered (:func:`app.worker.faust_compat.take_batches`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from faust.exceptions import PartitionsMismatch

from app.broker.admin import changelog_topic
from app.broker.security import client_security
from app.contract.deadletter import deadletter_headers, fit, redacted
from app.contract.partitioning import partition_of
from app.contract.records import Event, Feedback, ItemOp, UserProfile
from app.contract.validate import (
    Limits,
    Reason,
    Rejection,
    Validator,
    forget_rejection,
    validators,
)
from app.core.experiments import variant_of
from app.core.forgetting import NOT_FORGOTTEN, Markers, after_request, marker, swept
from app.core.serving import now_ms
from app.core.state import (
    Applied,
    FeedbackState,
    HasEventId,
    ItemState,
    KeyState,
    ProfileState,
    StateCodec,
    UserState,
    apply_batch,
    fold_event,
    fold_feedback,
    fold_item,
    fold_profile,
)
from app.metrics import Metrics
from app.settings import Settings
from app.worker.declarations import Declarations
from app.worker.faust_compat import (
    OutsideTransactions,
    StallWatch,
    acting_as,
    consumer_lag,
    table_keys,
    take_batches,
    unprocessed,
    unstick,
    write_through,
)
from app.worker.itemstats import ItemOwners
from app.worker.results import KeyResult, count_failure

if TYPE_CHECKING:
    from app.worker.pipeline import Pipeline

log = logging.getLogger(__name__)

LOOP_PROBE_SECONDS = 0.05
RETRY_FIRST_SECONDS = 0.1   # back-off after a transient failure, doubling up to the max
RETRY_MAX_SECONDS = 5.0
TRAINER_WITHIN_SECONDS = 0.2   # the trainer's mini-batch: what arrived within this time

PERSONAL = frozenset({"events", "feedback", "users"})   # the user-keyed input flows

S = TypeVar("S", bound=KeyState)
R = TypeVar("R", bound=HasEventId)
T = TypeVar("T")


Prepare = Callable[[list[R]], Awaitable[Callable[[S, R], S]]]
After = Callable[[list[KeyResult[S, R]]], Awaitable[None]]


@dataclass
class LongestStall:
    """The largest lateness seen in the current window of ``window`` seconds and the one
    before it: a gauge that shows a stall for one to two windows, then lets it go."""

    window: float = 60.0
    started: float | None = None
    current: float = 0.0
    previous: float = 0.0

    def observe(self, late: float, now: float) -> float:
        if self.started is None:
            self.started = now
        elif now - self.started >= self.window:
            skipped = now - self.started >= 2 * self.window   # a whole window went by
            self.previous = 0.0 if skipped else self.current
            self.current, self.started = 0.0, now
        self.current = max(self.current, late)
        return max(self.current, self.previous)


class ForgetGuard:
    """Forgotten users' markers in the user-state table (app.core.forgetting): written when
    a user is forgotten, read before their events and feedback are applied, swept once
    ``guard_ms`` has passed since the request or since this worker found the marker (by
    the events flow, in the marker's partition)."""

    def __init__(self, table: Any, guard_ms: int, metrics: Metrics) -> None:
        self.table, self.guard_ms, self._metrics = table, guard_ms, metrics
        self.codec = StateCodec(UserState)
        self.markers = Markers()

    def mark(self, key: bytes, event: Any) -> None:
        """Leave ``key``'s marker (inside ``acting_as(event)``, ``event`` the tombstone)."""
        message = event.message
        at = _timestamp_ms(message) or now_ms()
        self.table[key] = self.codec.encode(marker(at, message.partition))
        self.markers.add(key, at, message.partition)

    def forgotten_at(self, key: bytes) -> int:
        """When ``key`` was forgotten, while its marker stands; 0 otherwise."""
        raw = self.table.get(key)
        return 0 if raw is None else self.codec.decode(raw).forgotten[0]

    def collect(self, key: bytes, state: UserState) -> None:
        """A stored state seen by the scan after an assignment: its marker, if any."""
        if state.forgotten != NOT_FORGOTTEN:
            self.markers.add(key, *state.forgotten, found_ms=now_ms())

    def sweep(self, batch: Sequence[Any]) -> None:
        """Delete (or unmark) the due markers of the batch's partitions, each written in
        its partition (under exactly-once, in that partition's transaction)."""
        if not len(self.markers):
            return
        before = now_ms() - self.guard_ms
        firsts: dict[int, Any] = {}
        for event in batch:
            firsts.setdefault(event.message.partition, event)
        for partition, event in firsts.items():
            for key in self.markers.due(partition, before):
                try:
                    with acting_as(event), write_through():
                        raw = self.table.get(key)
                        after = None if raw is None else swept(self.codec.decode(raw))
                        if after is None:
                            del self.table[key]
                        else:
                            self.table[key] = self.codec.encode(after)
                except Exception as exc:  # noqa: BLE001 - kept: swept at a later batch
                    count_failure(self._metrics, "forget-sweep", exc)
                    continue
                self.markers.remove(key, partition)


def _timestamp_ms(message: Any) -> int:
    """A Kafka record's timestamp in ms (0 when it has none)."""
    stamp = getattr(message, "timestamp", None)
    return round(stamp * 1000) if stamp and stamp > 0 else 0


@dataclass(frozen=True)
class Forgetting:
    """What a tombstone on a flow's topic does: forget its key. The key is deleted from
    every table in ``tables`` (each delete writes a tombstone to the table's changelog, so
    compaction removes the key's history and a recovering worker never sees it again)
    and, with a ``guard``, its user state replaced by a marker (deleted later), then
    ``after`` drops whatever else is kept for those keys."""

    tables: tuple[Any, ...]
    after: Callable[[list[bytes]], Awaitable[None]] | None = None
    guard: ForgetGuard | None = None
    # a user's keys in a table: theirs, and in the feedback table their lists' slots too
    keys: Callable[[Any, bytes], Sequence[bytes]] = lambda table, key: (key,)


@dataclass(frozen=True)
class Flow(Generic[S, R]):
    """How one input topic is processed; ``label`` is its metric label. ``prepare`` may
    build the fold for a batch (e.g. after embedding its search queries); ``after`` sees
    every key's result once the batch is folded (e.g. to publish recommendations). With
    ``publishes_state`` its ``after`` publishes each key's state (idempotently) and must not
    be lost: a key whose records all come again is handed to it again (the first delivery
    may have written the state and stopped before publishing it), and a failure of it runs
    the batch again instead of being counted and skipped."""

    label: str
    validate: Validator[R]
    codec: StateCodec[S]
    fold: Callable[[S, R], S]
    table: Any
    on_applied: Callable[[Sequence[R]], None] = lambda records: None
    prepare: Prepare[R, S] | None = None
    after: After[S, R] | None = None
    forgetting: Forgetting | None = None
    publishes_state: bool = False
    partitions: int = 0   # with ``reroute``: a record not on its key's partition goes there
    reroute: Callable[[Any, int], Awaitable[None]] | None = None
    state_key: Callable[[bytes], bytes] | None = None   # record key -> table key (pseudonym)
    # a forgotten user's input from before the request is dropped (the events flow also
    # sweeps the markers)
    guard: ForgetGuard | None = None
    sweeps: bool = False


class DeadLetters:
    """Sends rejected records to the dead-letter topic, untouched (or cut to ``max_bytes``,
    with their sizes in headers, when too large to send whole; or with neither key nor
    value for the labels in ``redact``), and counts them once sent."""

    def __init__(self, topic: Any, metrics: Metrics, max_bytes: int = 262_144,
                 redact: frozenset[str] = frozenset()) -> None:
        self._topic = topic
        self._metrics = metrics
        self.max_bytes = max_bytes
        self.redact = redact   # the labels whose dead letters keep headers only

    async def send(self, label: str, event: Any, rejection: Rejection) -> None:
        message = event.message
        key, value, sizes = (redacted(message.key, message.value) if label in self.redact
                             else fit(message.key, message.value, self.max_bytes))
        await self._topic.send(
            key=key,
            value=value,
            headers=deadletter_headers(
                rejection, message.topic, message.partition, message.offset, now_ms()
            ) + sizes,
        )
        self._metrics.deadletters.labels(label, rejection.reason.value).inc()
        self._metrics.records.labels(label, "rejected").inc()


def transient(exc: BaseException) -> bool:
    """Whether a failure may pass by itself (worth retrying the same record), rather than
    follow from the record: the broker unreachable or timing out, or a table whose
    changelog topic the worker does not see with its partitions yet."""
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    return isinstance(exc, PartitionsMismatch | TimeoutError | ConnectionError)


class Health:
    """What keeps a worker from being ready besides Faust's own state: stages held up by a
    transient failure, each logged once when it starts (with its cause) and once when it
    ends, never per record or per retry."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float]] = {}

    @property
    def ok(self) -> bool:
        return not self._held

    def hold(self, stage: str, exc: BaseException) -> None:
        cause = type(exc).__name__
        if self._held.get(stage, ("", 0.0))[0] != cause:
            log.warning("%s held up by %s: retrying with back-off, not ready meanwhile",
                        stage, cause)
            self._held[stage] = (cause, time.monotonic())

    def release(self, stage: str) -> None:
        held = self._held.pop(stage, None)
        if held is not None:
            log.warning("%s going again after %.1f s held up by %s", stage,
                        time.monotonic() - held[1], held[0])


class BrokerWatch:
    """Whether the Kafka cluster answers: one metadata request per :meth:`check` (bounded
    by ``timeout``). ``misses`` unanswered in a row hold the worker not ready (stage
    "broker": /ready answers 503, logged once), the next answer releases it. With nothing
    to consume a worker would otherwise look ready through a whole broker outage."""

    def __init__(self, probe: Callable[[], Awaitable[Any]], health: Health, metrics: Metrics,
                 misses: int = 2, timeout: float = 5.0) -> None:
        self._probe = probe
        self._health = health
        self._metrics = metrics
        self.misses = misses
        self.timeout = timeout
        self.failures = 0

    async def check(self) -> bool:
        try:
            await asyncio.wait_for(self._probe(), self.timeout)
        except Exception as exc:  # noqa: BLE001 - any failure is an unanswered probe
            self.failures += 1
            if self.failures >= self.misses:
                self._health.hold("broker", exc)
                self._metrics.broker_reachable.set(0)
            return False
        self.failures = 0
        self._health.release("broker")
        self._metrics.broker_reachable.set(1)
        return True


def cluster_probe(settings: Settings) -> Callable[[], Awaitable[Any]]:
    """A metadata request to the cluster on one long-lived admin client, made again after a
    failure (a client whose broker went away may never answer again)."""
    client: list[Any] = []

    async def probe() -> Any:
        if not client:
            admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers(),
                                        request_timeout_ms=5_000, **client_security(settings))
            await admin.start()
            client.append(admin)
        try:
            cluster = await client[0].describe_cluster()
            if not cluster.get("brokers"):
                raise RuntimeError("the cluster lists no broker")
            return cluster
        except BaseException:
            admin = client.pop()
            with contextlib.suppress(Exception):
                await admin.close()
            raise

    return probe


class Backoff:
    """Delays between retries: ``first`` seconds, doubling up to ``most``."""

    def __init__(self, first: float = RETRY_FIRST_SECONDS,
                 most: float = RETRY_MAX_SECONDS) -> None:
        self.delay, self.most = first, most

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.most, self.delay * 2)


def time_collections(metrics: Metrics) -> None:
    """Time every run of Python's garbage collector into ``streamrec_gc_pause_seconds``."""
    started: list[float] = []

    def on_collect(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            metrics.gc_pause.labels(str(info["generation"])).observe(
                time.perf_counter() - started[0])

    gc.callbacks.append(on_collect)


def limits(settings: Settings) -> Limits:
    """The validation bounds a worker applies, from its settings."""
    return Limits(
        max_payload_bytes=settings.max_payload_bytes,
        min_event_time=settings.min_event_time,
        max_clock_skew_ms=int(settings.max_clock_skew_seconds * 1000),
    )


async def _until_not_transient(label: str, action: Callable[[], T], health: Health,
                               metrics: Metrics) -> T:
    """``action()``, run again with back-off while it fails transiently (the worker held
    not ready meanwhile); any other failure is raised."""
    backoff = Backoff()
    while True:
        try:
            outcome = action()
        except Exception as exc:
            if not transient(exc):
                raise
            metrics.retries.labels(label).inc()
            health.hold(label, exc)
            await backoff.wait()
            continue
        health.release(label)
        return outcome


def _not_forgotten(flow: Flow[S, R], key: bytes, state: S, pairs: list[tuple[Any, R]]
                   ) -> list[tuple[Any, R]]:
    """``pairs`` less those from before a request to forget ``key`` whose marker stands."""
    if flow.guard is None:
        return pairs
    at = (state.forgotten[0] if isinstance(state, UserState)
          else flow.guard.forgotten_at(key))
    if not at:
        return pairs
    keep = after_request([_timestamp_ms(event.message) for event, _ in pairs], at)
    return [pair for pair, kept in zip(pairs, keep, strict=True) if kept]


async def _apply_key(flow: Flow[S, R], key: bytes, pairs: list[tuple[Any, R]], window: int,
                     fold: Callable[[S, R], S], health: Health, metrics: Metrics,
                     ) -> tuple[S, Applied[S, R], int]:
    """Fold one key's records into its stored state and write it: the state before, the
    outcome, and how many records were dropped as a forgotten user's. Transient failures
    are retried here, in order, until they pass."""
    def fold_and_write() -> tuple[S, Applied[S, R], int]:
        with acting_as(pairs[-1][0]):
            state = flow.codec.decode(flow.table.get(key))
            kept = _not_forgotten(flow, key, state, pairs)
            if not kept:
                return state, Applied(state, [], 0), len(pairs)
            result = apply_batch(state, [record for _, record in kept], window, fold,
                                 [(event.message.partition, event.message.offset)
                                  for event, _ in kept])
            # a redelivered record means this key's last write may not have reached the
            # changelog (a killed worker's local table can be ahead of it, its offsets not
            # committed): written again, so the changelog catches up
            if result.applied or result.duplicates:
                flow.table[key] = flow.codec.encode(result.state)
        return state, result, len(pairs) - len(kept)

    return await _until_not_transient(flow.label, fold_and_write, health, metrics)


async def _forget(flow: Flow[S, R], forgets: dict[bytes, list[Any]],
                  deadletters: DeadLetters, health: Health, metrics: Metrics) -> None:
    """Delete each key in ``forgets`` (key -> its tombstones' Faust events in the batch,
    oldest first) from every table of the flow's :class:`Forgetting`, in the tombstone's
    partition; transient failures are retried here until they pass. Every tombstone is
    counted, or dead-lettered when its key's deletion fails."""
    assert flow.forgetting is not None
    tables, guard, keys = flow.forgetting.tables, flow.forgetting.guard, flow.forgetting.keys
    done: list[bytes] = []
    requests = 0
    for key, events in forgets.items():
        def delete(key: bytes = key, event: Any = events[-1]) -> None:
            with acting_as(event), write_through():
                for table in tables:
                    for held in keys(table, key):
                        del table[held]   # a changelog tombstone, whether or not held
                if guard is not None:
                    guard.mark(key, event)

        try:
            await _until_not_transient(flow.label, delete, health, metrics)
        except Exception as exc:  # noqa: BLE001 - one key must not stop the others
            count_failure(metrics, flow.label, exc)
            cause = type(exc).__name__
            for event in events:
                await deadletters.send(
                    flow.label, event, Rejection(Reason.PROCESSING_ERROR, cause, cause))
            continue
        done.append(key)
        requests += len(events)
    metrics.forgotten.inc(requests)
    if flow.forgetting.after is not None and done:
        try:
            await flow.forgetting.after(done)
        except Exception as exc:  # noqa: BLE001 - the state is gone; count and go on
            count_failure(metrics, f"{flow.label}-after", exc)


def _same(key: bytes) -> bytes:
    return key


async def process_batch(
    flow: Flow[S, R], batch: Sequence[Any], deadletters: DeadLetters, metrics: Metrics,
    window: int, health: Health | None = None,
) -> None:
    """Validate, dead-letter, deduplicate and fold one batch of Faust events. Returns once
    every record is applied or dead-lettered (a transient failure is waited out)."""
    health = health or Health()
    started = time.perf_counter()
    received = now_ms()
    by_key: dict[bytes, list[tuple[Any, R]]] = {}
    forgets: dict[bytes, list[Any]] = {}
    superseded = 0
    state_key = flow.state_key or _same
    homes: dict[bytes, int] = {}   # (murmur2 is pure Python: once per key and batch)
    for event in batch:
        message = event.message
        if flow.reroute is not None and message.key is not None:
            home = homes.get(message.key)
            if home is None:
                home = homes[message.key] = partition_of(message.key, flow.partitions)
            if message.partition is not None and message.partition != home:
                # a producer with another partitioner (librdkafka's default, a custom
                # one): its state would split from the key's other records; sent to the
                # key's partition and processed there (its event id dedupes a resend)
                await flow.reroute(event, home)
                metrics.misrouted.labels(flow.label).inc()
                continue
        if flow.forgetting is not None and message.value is None:
            refused = forget_rejection(message.key)
            if refused is None:
                # what the key had earlier in this batch is forgotten with it; its records
                # after the tombstone are applied after the forgetting, to a new state
                key = state_key(message.key)
                superseded += len(by_key.pop(key, ()))   # accepted, then forgotten
                forgets.setdefault(key, []).append(event)
                continue
            outcome: R | Rejection = refused
        else:
            outcome = flow.validate(message.key, message.value, received)
        if isinstance(outcome, Rejection):
            await deadletters.send(flow.label, event, outcome)
        else:
            by_key.setdefault(state_key(message.key), []).append((event, outcome))
    if forgets:
        await _forget(flow, forgets, deadletters, health, metrics)
    accepted, duplicates = superseded, 0
    fold = flow.fold
    if flow.prepare is not None and by_key:
        try:
            fold = await flow.prepare(
                [record for pairs in by_key.values() for _, record in pairs])
        except Exception as exc:  # noqa: BLE001 - fold without the extras rather than crash
            count_failure(metrics, f"{flow.label}-prepare", exc)
    results: list[KeyResult[S, R]] = []
    forgotten = 0
    for key, pairs in by_key.items():
        try:
            state, result, dropped = await _apply_key(flow, key, pairs, window, fold, health,
                                                      metrics)
        except Exception as exc:  # noqa: BLE001 - one key must not stop the others
            count_failure(metrics, flow.label, exc)
            cause = type(exc).__name__
            for event, _ in pairs:
                await deadletters.send(
                    flow.label, event, Rejection(Reason.PROCESSING_ERROR, cause, cause))
            continue
        accepted += len(result.applied)
        duplicates += result.duplicates
        forgotten += dropped
        flow.on_applied(result.applied)
        if result.applied or (flow.publishes_state and result.duplicates):
            results.append(KeyResult(key, result.state, result.applied, pairs[-1][0], state))
    if flow.after is not None and results:
        try:
            await flow.after(results)
        except Exception as exc:   # the state is saved: counted and skipped, or run again
            if flow.publishes_state:
                raise   # run again: its keys are duplicates then, and published again
            count_failure(metrics, f"{flow.label}-after", exc)
    if flow.sweeps and flow.guard is not None:
        flow.guard.sweep(batch)
    metrics.records.labels(flow.label, "accepted").inc(accepted)
    metrics.records.labels(flow.label, "duplicate").inc(duplicates)
    if forgotten:
        metrics.records.labels(flow.label, "forgotten").inc(forgotten)
    metrics.batch_records.labels(flow.label).observe(len(batch))
    metrics.batch_seconds.labels(flow.label).observe(time.perf_counter() - started)


def pseudonymous_profiles(user_key: Callable[[bytes], bytes]
                          ) -> Callable[[ProfileState, UserProfile], ProfileState]:
    """``fold_profile`` keeping the profile under the user's pseudonym, not their id."""
    def fold(state: ProfileState, profile: UserProfile) -> ProfileState:
        hidden = user_key(profile.user_id.encode()).decode()
        return fold_profile(state, msgspec.structs.replace(profile, user_id=hidden))
    return fold


def forget_guard(decl: Declarations, metrics: Metrics) -> ForgetGuard | None:
    """The markers of forgotten users, unless STREAMREC_FORGET_GUARD_SECONDS is 0."""
    guard_ms = round(decl.settings.forget_guard_seconds * 1000)
    return ForgetGuard(decl.user_state, guard_ms, metrics) if guard_ms > 0 else None


def flows(decl: Declarations, metrics: Metrics, pipeline: Pipeline | None = None,
          guard: ForgetGuard | None = None) -> list[tuple[Any, Flow[Any, Any]]]:
    """(source topic, flow) for every input topic; with a pipeline, events lead to
    recommendations and items to the catalogue; with a ``guard``, a forgotten user's state
    is a marker for a while (app.core.forgetting)."""
    check = validators(limits(decl.settings))

    def count_events(events: Sequence[Event]) -> None:
        kinds = Counter(type(event).__struct_config__.tag for event in events)
        for kind, count in kinds.items():   # (a labelled counter's lookup per kind, not event)
            metrics.events.labels(str(kind)).inc(count)

    experiment = decl.settings.ab_test()

    def count_feedback(records: Sequence[Feedback]) -> None:
        for record in records:
            metrics.feedback.labels(variant_of(experiment, record.user_id),
                                    record.type.value).inc()

    def rerouter(topic: Any) -> Callable[[Any, int], Awaitable[None]]:
        if decl.settings.exactly_once:   # another worker's partition: no transaction
            topic = OutsideTransactions(decl.app, topic)

        async def reroute(event: Any, partition: int) -> None:
            message = event.message
            await topic.send(key=message.key, value=message.value, partition=partition,
                             headers=message.headers)
        return reroute

    partitions = decl.settings.partitions
    user_key = decl.user_key if decl.user_key.enabled else None
    return [
        (decl.events, Flow[UserState, Event](
            "events", check.events, StateCodec(UserState), fold_event, decl.user_state,
            count_events,
            prepare=pipeline.prepare_events if pipeline else None,
            after=pipeline.after_events if pipeline else None,
            partitions=partitions, reroute=rerouter(decl.events), state_key=user_key,
            guard=guard, sweeps=True,
        )),
        (decl.items, Flow[ItemState, ItemOp](
            "items", check.items, StateCodec(ItemState), fold_item, decl.item_state,
            after=pipeline.after_items if pipeline else None, publishes_state=True,
            partitions=partitions, reroute=rerouter(decl.items),
        )),
        (decl.feedback, Flow[FeedbackState, Feedback](
            "feedback", check.feedback, StateCodec(FeedbackState), fold_feedback,
            decl.feedback_state, count_feedback,
            prepare=pipeline.feedback.prepare_feedback if pipeline else None,
            after=pipeline.feedback.after_feedback if pipeline else None,
            partitions=partitions, reroute=rerouter(decl.feedback), state_key=user_key,
            guard=guard,
        )),
        (decl.users, Flow[ProfileState, UserProfile](
            "users", check.users, StateCodec(ProfileState),
            fold_profile if user_key is None else pseudonymous_profiles(user_key),
            decl.profile_state,
            after=pipeline.after_profiles if pipeline else None,
            forgetting=Forgetting(
                tuple(t for t in decl.user_tables() if guard is None or t is not guard.table),
                pipeline.after_forget if pipeline else None, guard, decl.user_keys),
            partitions=partitions, reroute=rerouter(decl.users), state_key=user_key,
        )),
    ]


async def process_until_done(flow: Flow[S, R], batch: Sequence[Any],
                             deadletters: DeadLetters, metrics: Metrics, window: int,
                             health: Health) -> None:
    """:func:`process_batch`, run again (with back-off, the worker not ready meanwhile)
    while anything escapes it (the dead-letter topic unreachable...): the batch is not
    acknowledged before it is done, so no record is lost, and what a first attempt
    applied is a duplicate to the next."""
    backoff = Backoff()
    stage = f"{flow.label}-batch"
    while True:
        try:
            await process_batch(flow, batch, deadletters, metrics, window, health)
        except Exception as exc:  # noqa: BLE001 - retried: these records are not done yet
            count_failure(metrics, stage, exc)
            health.hold(stage, exc)
            await backoff.wait()
            continue
        health.release(stage)
        return


def attach(decl: Declarations, metrics: Metrics, pipeline: Pipeline | None = None,
           health: Health | None = None) -> None:
    """Register one agent per input topic on the app (and the catalogue follower)."""
    settings = decl.settings
    health = health or Health()
    deadletters = DeadLetters(decl.deadletter, metrics, settings.deadletter_max_bytes,
                              PERSONAL if settings.deadletter_redact else frozenset())
    guard = forget_guard(decl, metrics)
    if pipeline is not None:
        decl.app.task(pipeline.follow_catalogue)
        decl.app.task(pipeline.follow_models)
        learner = pipeline.feedback

        async def trainer(stream: Any) -> None:
            async for values in stream.take(settings.batch_max, TRAINER_WITHIN_SECONDS):
                try:
                    await learner.train(values)
                except Exception as exc:  # noqa: BLE001 - the next batch may train again
                    count_failure(metrics, "examples", exc)

        decl.app.agent(decl.examples, name="streamrec.trainer")(trainer)

        async def keep_memory() -> None:
            await pipeline.keep_memory(decl.app, decl.user_state,
                                       guard.collect if guard is not None else None)

        decl.app.task(keep_memory)

    if pipeline is not None and settings.global_items:
        _attach_item_stats(decl, metrics, pipeline, deadletters, health)

    inputs = set(settings.input_topics())

    watch = StallWatch()

    async def report_lag() -> None:
        try:
            lags = await consumer_lag(decl.app, inputs)
        except Exception as exc:  # noqa: BLE001 - the broker unreachable: the gauge waits
            count_failure(metrics, "metrics", exc)
        else:
            metrics.consumer_lag.clear()
            for (topic, partition), lag in lags.items():
                metrics.consumer_lag.labels(topic, str(partition)).set(lag)
        try:
            stalled = await watch.check(decl.app, inputs, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - a watchdog must not stop the worker
            count_failure(metrics, "metrics", exc)
            stalled = []
        for tp, found in stalled:
            if found is None:
                metrics.partition_stalls.labels(tp.topic, "idle").inc()
                continue
            changed = await unstick(decl.app.consumer, tp, found)
            metrics.partition_stalls.labels(tp.topic, "unstuck" if changed else "reported").inc()
            log.warning("input partition %s/%d read nothing for %.0f s with %d records "
                        "waiting (%s): %s", tp.topic, tp.partition, watch.after,
                        found["waiting"], ", ".join(f"{k}={v}" for k, v in found.items()),
                        "put back in the fetch set" if changed else "left as it is")

    decl.app.timer(5.0)(report_lag)

    broker = BrokerWatch(cluster_probe(settings), health, metrics)

    async def watch_broker() -> None:
        await broker.check()

    decl.app.timer(5.0)(watch_broker)

    async def watch_loop() -> None:
        longest = LongestStall()
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LOOP_PROBE_SECONDS)
            woke = time.perf_counter()
            late = max(0.0, woke - started - LOOP_PROBE_SECONDS)
            metrics.loop_lag.observe(late)
            metrics.loop_stall.set(longest.observe(late, woke))

    decl.app.task(watch_loop)
    time_collections(metrics)

    async def report_table_sizes() -> None:
        for name, table in decl.tables().items():
            try:
                metrics.table_keys.labels(name).set(table_keys(table))
            except Exception as exc:  # noqa: BLE001 - a gauge must not stop the worker
                count_failure(metrics, "metrics", exc)

    decl.app.timer(15.0)(report_table_sizes)
    for topic, flow in flows(decl, metrics, pipeline, guard):

        def waiting(processed: dict[Any, int], topic: str = topic.get_topic_name()) -> int:
            return unprocessed(decl.app, topic, processed)

        async def agent(stream: Any, flow: Flow[Any, Any] = flow,
                        behind: Callable[[dict[Any, int]], int] = waiting) -> None:
            async for batch in take_batches(
                stream, settings.batch_max, settings.batch_within_seconds,
                settings.batch_backlog_seconds, behind,
            ):
                await process_until_done(flow, batch, deadletters, metrics,
                                         settings.dedup_window, health)

        decl.app.agent(topic, name=f"streamrec.{flow.label}")(agent)


def _attach_item_stats(decl: Declarations, metrics: Metrics, pipeline: Pipeline,
                       deadletters: DeadLetters, health: Health) -> None:
    """Global item statistics: the owner's agent on the evidence topic (merging into the
    item-stats table, the snapshot) and every worker's follower (the snapshot, then the
    evidence itself)."""
    settings = decl.settings
    topic = settings.topic_evidence
    owners = ItemOwners(
        decl.item_stats, pipeline.recommender.covisit,
        pipeline.recommender.popularity.half_life_ms, settings.partitions, metrics,
        lambda: frozenset(tp.partition for tp in decl.app.consumer.assignment()
                          if tp.topic == topic))

    async def follow_item_stats() -> None:
        await pipeline.follow_item_stats(changelog_topic(settings.app_id, "item-stats"),
                                         topic)

    decl.app.task(follow_item_stats)

    async def dead_letter(event: Any, why: Rejection) -> None:
        await deadletters.send("evidence", event, why)

    def waiting(processed: dict[Any, int]) -> int:
        return unprocessed(decl.app, topic, processed)

    async def aggregate(stream: Any) -> None:
        flush = settings.item_stats_flush_seconds   # a batch: what came within it
        async for batch in take_batches(stream, settings.batch_max, flush, flush, waiting):
            backoff = Backoff()
            while True:   # not acknowledged before it is merged and written
                try:
                    await owners.process(batch, dead_letter)
                except Exception as exc:  # noqa: BLE001 - run again: merged exactly once
                    count_failure(metrics, "evidence", exc)
                    health.hold("evidence-batch", exc)
                    await backoff.wait()
                    continue
                health.release("evidence-batch")
                break

    decl.app.agent(decl.evidence, name="streamrec.item-stats")(aggregate)
