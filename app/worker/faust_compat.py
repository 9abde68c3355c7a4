"""The one place StreamRec touches private Faust APIs.

Faust tables find the partition of a changelog write through the "current event" context
variable, which Faust sets only on its per-event path. Inside ``stream.take_events()`` the
agent handles a whole batch, so before it writes a key's state it sets the current event to
that key's last event itself (faust-streaming issue #497). A test covers this.

Agents take their batches with :func:`take_batches`, Faust's ``take_events`` with a window
that grows under a backlog (docs/pipeline.md, "Batches and freshness").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from faust.streams import _current_event
from faust.types import TP
from mode.services import WaitResults

from app.errors import EXIT_STUCK

log = logging.getLogger(__name__)


@contextmanager
def acting_as(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event for table writes inside the block."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def _waiting(app: Any, topics: set[str], done: dict[Any, int]
             ) -> Iterator[tuple[Any, int]]:
    """Per assigned partition of ``topics``: the records after the last offset ``done``
    (else after the last one read: Faust keeps it in a private map) up to the high-water
    mark of the last fetch. Partitions not fetched yet are left out."""
    consumer = app.consumer
    read_offsets = getattr(consumer, "_read_offset", {})
    for tp in consumer.assignment():
        if tp.topic not in topics:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001, S112 - not fetched yet, or no longer assigned
            continue
        if highwater is None:
            continue
        last = done.get(tp, read_offsets.get(tp))
        yield tp, max(0, highwater - (0 if last is None else last + 1))


LAG_ASK_SECONDS = 4.0   # the lag gauge is refreshed every 5 s


async def consumer_lag(app: Any, topics: set[str], ends: Ends | None = None
                       ) -> dict[tuple[str, int], int]:
    """Records not yet committed, per assigned partition of ``topics``: the broker's end
    offset (asked now; ``ends`` by default the Kafka client's) less the group's committed
    offset, as ``kafka-consumer-groups`` reports it.

    It used to be the records not yet *read*, against the high-water mark of the last
    fetch: measured under a 10x burst (``streamrec soak burst``) it read ~700 while the
    group trailed the broker by 12,000 (the fetches pause while the stream's buffer is full,
    so the mark stood still), and its peak was half the broker's. The broker is given
    ``LAG_ASK_SECONDS`` to answer (TimeoutError then)."""
    consumer = app.consumer
    assigned = [tp for tp in consumer.assignment() if tp.topic in topics]
    if not assigned:
        return {}
    async with asyncio.timeout(LAG_ASK_SECONDS):
        known = await (ends or _client_ends(consumer))(assigned)
    committed = getattr(consumer, "_committed_offset", {})
    lags = {}
    for tp in assigned:
        if tp not in known:
            continue
        end, _ = known[tp]
        done = committed.get(tp)
        lags[(tp.topic, tp.partition)] = max(0, end - (done if done is not None else 0))
    return lags


def unprocessed(app: Any, topic: str, processed: dict[Any, int]) -> int:
    """Records of this worker's partitions of ``topic`` not processed yet: each partition's
    high-water mark minus the offset after the last one ``processed`` (a partition with
    nothing processed yet counts what is not read). Unlike the read lag, this moves with
    the work done, not with the consumer's read-ahead (which runs in fetch-sized jumps and
    stalls while the stream's buffer is full)."""
    return sum(waiting for _, waiting in _waiting(app, {topic}, processed))


def table_keys(table: Any) -> int:
    """Keys a table holds for this worker's active partitions: RocksDB's own estimate per
    partition database (no scan, so cheap with millions of users); a store without one
    (the in-memory store of tests) is counted."""
    store = table.data
    active = getattr(store, "_dbs_for_actives", None)
    if active is None:
        return len(store)
    total = 0
    for db in active():
        estimate = db.property_int_value("rocksdb.estimate-num-keys")
        total += int(estimate or 0)
    return total


def take_batches(stream: Any, max_: int, within: float, backlog_within: float,
                 behind: Callable[[dict[Any, int]], int]) -> AsyncIterator[list[Any]]:
    """Batches of a stream's events, as ``stream.take_events(max_, within)`` gives them
    (each acked once the caller asks for the next, and only then: a batch the caller was
    still working on when the stream stopped, for a shutdown or a rebalance, is not acked,
    so its offsets are not committed and it is read again; Faust's ``take_events`` acks it
    on the way out, which lost events on every rolling restart), except while a backlog
    is worked off: while at least ``max_`` records wait (``behind(processed)``: not yet
    processed, given the last offset processed per partition) and the batch keeps filling
    fast, it waits another ``within``, up to ``backlog_within`` in all.
    Filling fast: the last ``within`` brought a tenth of ``max_``, or, on a machine whose
    consumer does not take events in that fast, at least half what the batch's first
    ``within`` brought (and a hundredth of ``max_``): the bar follows this machine's intake
    rather than a fixed one that only fast machines reach. A bigger batch covers more of each
    user's burst (one recommendation instead of several for states the next batch would
    replace); at ordinary rates nothing waits on the broker and a batch closes after
    ``within`` as before. The stream's channel is read in bulk (:class:`_Channel`), not
    through Faust's stream iterator: the same checks per event, without the iterator's
    per-event round of the event loop.

    A batch grows only while the backlog shrinks from one batch to the next by at least
    half the last batch (the worker gains on its input), or when a backlog first appears.
    Without that rule a worker that fell behind paced input stayed behind for good
    (benchmark's half load, 5,000 events/s: p50 0.2-1.2 s instead of 16-23 ms): records
    produced a few at a time reach a batch far slower than a bulk backlog does (~7,000/s
    against ~20,000/s), so growing batches waited for them, and the worker processed
    about what arrived, never catching up.
    Also measured and rejected for the same reason: opening a batch's window when the
    previous batch is handed out, and a lower fixed "filling fast" bar (the bar that follows
    the intake is capped at the old one, and at a paced rate beyond what the worker
    sustains it fell behind less, not more: BENCHMARKS.md, 2026-12-02)."""
    batches = _take_batches(stream, max_, within, backlog_within, behind)
    active = getattr(stream, "_active_agens", None)   # closed when the stream stops, as
    if active is not None:                            # Faust does with take_events
        active.add(batches)
    return batches


class _Channel:
    """A stream's channel read in bulk: what Faust's stream iterator does for each event
    (skip an event from before a rebalance, track it for the consumer's acks), without its
    per-event round of the event loop, processors and sensors. On the decode-only job
    (2026-12-07, one experiment): ~15,700 events per CPU-second through ``take_events``,
    ~22,300 read in bulk; with :func:`deliveries_run_inline` too, 35,000-49,000
    (BENCHMARKS.md, "The intake below Faust's streams")."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.queue = stream.channel.queue
        app = stream.app
        self.app = app
        self.flow = app.flow_control
        self.acking = app.topics._acking_topics
        self.unacked = app.consumer._unacked_messages
        self.on_message_in = stream._on_message_in
        self.ended = False

    def _keep(self, event: Any, into: list[Any]) -> None:
        message = event.message
        if not self.flow.is_active() or message.generation_id != self.app.consumer_generation_id:
            return   # from before a rebalance: Faust's stream drops it too (read again)
        if message.topic in self.acking and not message.tracked:
            message.tracked = True
            self.unacked.add(message)
            self.on_message_in(message.tp, message.offset, message)
        into.append(event)

    def take(self, into: list[Any], most: int) -> None:
        """Move the events waiting in the channel into ``into``, up to ``most`` in all
        (raises what was thrown into the channel, as Faust's stream does, but the end of
        the stream, which sets ``ended``)."""
        queue = self.queue
        try:
            while len(into) < most and not queue.empty():
                self._keep(queue.get_nowait(), into)
        except StopAsyncIteration:   # Faust ends a channel's readers so on a stop
            self.ended = True

    async def first(self, into: list[Any]) -> None:
        """Wait for the next event (or the stream to stop) and add it to ``into``."""
        try:
            waited = await self.stream.wait(self.queue.get())
        except StopAsyncIteration:
            self.ended = True
            return
        if not waited.stopped:
            self._keep(waited.result, into)


async def _take_batches(stream: Any, max_: int, within: float, backlog_within: float,
                        behind: Callable[[dict[Any, int]], int]) -> AsyncIterator[list[Any]]:
    fast = max(1, max_ // 10)
    least = max(1, max_ // 100)
    channel = _Channel(stream)
    never = asyncio.Event()          # the windows: a timeout, or the stream stopping
    events: list[Any] = []
    processed: dict[Any, int] = {}   # partition -> last offset the caller is done with
    idle = False                     # the last window brought nothing
    before: int | None = None        # the backlog when the last batch was cut, if any
    last = 0                         # that batch's size
    while not stream.should_stop:
        if idle:   # nothing came in a whole window: sleep until something does
            await channel.first(events)
        channel.take(events, max_)
        if len(events) < max_ and not channel.ended:
            await stream.wait_for_stopped(never, timeout=within)
            channel.take(events, max_)
        backlog = behind(processed)
        # grow only while working the backlog off: a worker that fell behind input
        # arriving a few records at a time fills batches slowly, and growing them would
        # hold it at the input's pace, behind for good (measured; see take_batches)
        grow = backlog >= max_ and (before is None or backlog <= before - last // 2)
        waited, held = within, 0
        bar = max(least, min(fast, len(events) // 2))   # this machine's "fast"
        while (grow and len(events) - held >= bar and waited < backlog_within
               and len(events) < max_ and not stream.should_stop and not channel.ended):
            held = len(events)
            await stream.wait_for_stopped(never, timeout=within)
            channel.take(events, max_)
            waited += within
            backlog = behind(processed)
            grow = backlog >= max_
        before = backlog if backlog >= max_ else None
        if channel.ended:   # what was taken is not acked: read again after the stop
            return
        idle = not events
        if idle:
            continue
        batch = list(events)
        events.clear()
        last = len(batch)
        yield batch
        # the caller asked for the next batch: this one is processed (never reached on a
        # close, a stop or a rebalance, that left it half done: its offsets must not be
        # committed)
        for event in batch:
            await stream.ack(event)
            message = event.message
            if message.tp is not None and message.offset is not None:
                processed[message.tp] = max(message.offset, processed.get(message.tp, -1))


_THROUGH: ContextVar[bool] = ContextVar("changelog_write_through", default=False)


@contextmanager
def write_through() -> Iterator[None]:
    """Changelog writes made inside are sent at once, not held (:class:`WriteBack`), and a
    write held for the same key is dropped: a forgotten user's deletions and marker reach
    the changelogs without waiting for the commit, and no older held state of theirs
    follows them there."""
    token = _THROUGH.set(True)
    try:
        yield
    finally:
        _THROUGH.reset(token)


class WriteBack:
    """Changelog writes held until the next commit, as Kafka Streams' record cache holds
    them: a key written again before then replaces its held write (only its newest value
    reaches the changelog), and the held writes are sent, oldest first, when the commit
    flushes, or once they hold more than ``limit`` bytes (the oldest then, until they fit).
    The commit waits for them, so an input offset is committed only once every state
    written for the records before it is on the changelog; a worker killed while holding
    writes had not committed the input they came from, reads it again, and writes those
    keys again (a redelivered record rewrites its key: ``agents._apply_key``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.held: dict[tuple[str, int, Any], tuple[Callable[[], Any], int]] = {}

    def hold(self, ident: tuple[str, int, Any], ship: Callable[[], Any], size: int) -> bool:
        """Hold a write (last among the held); True when it replaced one for the same key."""
        replaced = self.drop(ident)
        self.held[ident] = (ship, size)
        self.size += size
        return replaced

    def drop(self, ident: tuple[str, int, Any]) -> bool:
        """Forget the write held for a key; whether there was one."""
        before = self.held.pop(ident, None)
        if before is not None:
            self.size -= before[1]
        return before is not None

    def overflow(self) -> list[Callable[[], Any]]:
        """The oldest held writes to send now, until the rest fit in ``limit``."""
        out: list[Callable[[], Any]] = []
        while self.size > self.limit and self.held:
            ident = next(iter(self.held))
            ship, size = self.held.pop(ident)
            self.size -= size
            out.append(ship)
        return out

    def release(self) -> None:
        """Send every held write, oldest first."""
        held, self.held, self.size = self.held, {}, 0
        for ship, _ in held.values():
            ship()


def flush_waits_for_changelogs(app: Any, tables: dict[str, Any], timeout: float = 60.0,
                               sent: Callable[[str, int], None] = lambda table, size: None,
                               transactional: bool = False, buffer_bytes: int = 0,
                               replaced: Callable[[str], None] = lambda table: None) -> None:
    """Make the flush that precedes every offset commit wait until each changelog record
    the ``tables`` (by label) have sent so far is acknowledged by the broker; each record
    is also reported to ``sent`` (the table's label, its key and value bytes).

    Faust flushes its producer before it commits offsets, but its buffer's flush returns as
    soon as one message takes more than 0.1 s to leave the buffer (``flush_atmost``), and
    the commit goes ahead with the state's changelog records still unsent: a worker killed
    then (or a broker that fails them) loses those updates for good, its offsets being past
    them. Here every changelog send is tracked until it is done, and the flush waits for
    those sent before it began (``timeout`` seconds at most; then it warns and commits, as
    Faust would).

    With ``transactional`` (exactly-once), each changelog record goes instead through the
    transactional producer of its partition, as the recommendations do: Faust sends table
    changelogs with its plain producer, outside every transaction (faust-streaming#177), so
    a killed worker's state would survive the transaction its outputs and offsets were
    aborted with. A commit (which ends those transactions) waits for the records sent
    before it began to be in them, and a rebalance commits before it stops the revoked
    partitions' producers.

    With ``buffer_bytes``, the writes are held until the commit (:class:`WriteBack`), and
    ``replaced`` is told of each write a newer one of the same key replaced."""
    pending: set[asyncio.Future[Any]] = set()
    held = WriteBack(buffer_bytes) if buffer_bytes > 0 else None
    for label, table in tables.items():
        send = _in_transaction(app, table) if transactional else table.send_changelog

        def ship(partition: Any, key: Any, value: Any, *args: Any, _send: Any = send,
                 _label: str = label, **kwargs: Any) -> Any:
            sent(_label, _size(key) + _size(value))
            future = _send(partition, key, value, *args, **kwargs)
            pending.add(future)
            future.add_done_callback(pending.discard)
            return future

        def tracked(partition: Any, key: Any, value: Any, *args: Any, _ship: Any = ship,
                    _label: str = label, **kwargs: Any) -> Any:
            if held is None or partition is None or _THROUGH.get():
                if held is not None:   # written through: no older held value follows it
                    held.drop((_label, partition, key))
                return _ship(partition, key, value, *args, **kwargs)
            if held.hold((_label, partition, key),
                         functools.partial(_ship, partition, key, value, *args, **kwargs),
                         _size(key) + _size(value)):
                replaced(_label)
            for early in held.overflow():
                early()
            return _Held(_Message(partition))

        table.send_changelog = tracked

    def release() -> None:
        if held is not None:
            held.release()

    async def wait_for(waiting: list[asyncio.Future[Any]]) -> None:
        """Wait for the records sent so far, not those sent while waiting: the offsets
        being committed were acked before it began, and every changelog record of theirs
        was sent by then; waiting until nothing at all is pending never ends under load
        (measured: a worker's commits stalled, and its fetching with them). Under
        exactly-once, records still unacknowledged after ``timeout`` end the process
        (give_up): committing the transaction without them would lose their state."""
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=timeout)
            if late and transactional:
                give_up(f"{len(late)} changelog records not acknowledged after "
                        f"{timeout:.0f} s")
            if late:
                log.warning("%d changelog records not acknowledged after %.0f s: "
                            "committing anyway", len(late), timeout)

    async def bounded(step: Awaitable[Any], what: str) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await step
        except TimeoutError:
            give_up(f"{what} not done after {timeout:.0f} s")

    if transactional:
        transactions = app.consumer.transactions
        commit = transactions.commit

        async def commit_after_changelogs(offsets: Any, start_new_transaction: bool = True
                                          ) -> bool:
            release()
            await wait_for(list(pending))
            done = bool(await bounded(commit(offsets, start_new_transaction=start_new_transaction),
                                      "a transaction's commit"))
            await bounded(commit_open_transactions(app, start_new_transaction),
                          "the open transactions' commit")
            return done

        transactions.commit = commit_after_changelogs
        revoking = transactions.on_partitions_revoked

        async def commit_before_revoke(revoked: Any) -> None:
            # Faust stops a revoked partition's producer with its transaction open (every
            # rebalance revokes every partition): aborted, it took the state and lists of
            # everything since the last commit with it, while the local tables kept them;
            # committed here, what was processed stays done. Faust commits only when it
            # has offsets to commit: the transactions holding records but no new offsets
            # are committed too (commit_open_transactions says why)
            try:
                await app.consumer.commit()
                release()   # held since, when that commit had no offsets to commit
                await wait_for(list(pending))
                await commit_open_transactions(app)
            except Exception as exc:   # noqa: BLE001 - fenced or gone: aborted, recovered
                log.warning("commit before a rebalance failed (%s): the partitions' last "
                            "work is redone by their next owner", type(exc).__name__)
            await revoking(revoked)

        transactions.on_partitions_revoked = commit_before_revoke
        consumer = app.consumer
        end_transactions = consumer.commit_and_end_transactions

        async def end_every_transaction() -> None:   # on a clean stop
            await end_transactions()
            release()
            await wait_for(list(pending))
            await commit_open_transactions(app, start_new_transaction=False)

        consumer.commit_and_end_transactions = end_every_transaction
        return
    producer = app.producer
    flush = producer.flush

    async def complete_flush() -> None:
        release()
        waiting = list(pending)
        await flush()
        await wait_for(waiting)

    producer.flush = complete_flush


def give_up(reason: str) -> None:
    """End the process at once, as a SIGKILL would, under exactly-once when the broker
    leaves a transaction hanging (seen after broker restarts: changelog sends through
    aiokafka's transactional producer never acknowledged, the worker's partitions stalled
    for good; `streamrec soak crash` under exactly-once lost 5,926 of 641,980 events to it).
    A worker that exits mid-transaction loses nothing: its transactional ids are fenced
    when it (or another worker) starts again, the open transactions are aborted, the
    tables are restored from the committed changelog and the input is read again from the
    committed offsets. Its supervisor (compose's restart policy, Kubernetes) restarts it."""
    log.critical("%s under exactly-once: exiting (%d) to be restarted; the open "
                 "transactions are aborted and redone", reason, EXIT_STUCK)
    logging.shutdown()
    os._exit(EXIT_STUCK)


async def commit_open_transactions(app: Any, start_new_transaction: bool = True) -> int:
    """Commit every open transaction that holds records, whether or not it has offsets to
    commit; returns how many. Faust commits a partition's transaction only with new
    offsets, so records sent since its last commit for a batch not yet acknowledged (its
    changelog writes, its lists) stayed in an open transaction across a rebalance: table
    recovery of a partition the worker kept then read the changelog only up to the last
    stable offset, before them, and put older values back over the local table's, so the
    batch's events were applied again and their lists published twice, once when that
    transaction finally committed and once again (the crash soak under exactly-once: 99
    and 259 of ~18,800 lists, all from one producer at one epoch, 16 s apart, found with
    ``kafka.tools.DumpLogSegments``). Committed without offsets, each key's write stands
    whole with the input position it was applied up to, and the batch's records read
    again are dropped by position."""
    producer = app.consumer.transactions.producer
    clients = getattr(producer, "_transaction_producers", {})
    locks = getattr(producer, "_trn_locks", {})
    committed = 0
    for tid, client in list(clients.items()):
        async with locks[tid]:   # looked at under the lock: a commit of Faust's may be on
            manager = client._txn_manager
            if not manager.is_in_transaction() or not (
                    manager.txn_partitions or manager.partitions_to_add()):
                continue
            await client.commit_transaction()
            if start_new_transaction:
                await client.begin_transaction()
        committed += 1
    return committed


def _in_transaction(app: Any, table: Any) -> Callable[..., asyncio.Future[Any]]:
    """``table.send_changelog`` through the transaction of the record's partition (the
    changelog is co-partitioned with the input it follows); its future is done once the
    broker has the record, and the offset is then persisted when the transaction commits,
    as Faust does for transactional writes."""
    topic = table.changelog_topic.get_topic_name()

    async def send(partition: int, key: bytes | None, value: bytes | None) -> Any:
        transactions = app.consumer.transactions
        delivered = await transactions.send(topic, key, value, partition, None, None)
        metadata = await delivered
        app.tables.persist_offset_on_commit(
            table.data, TP(metadata.topic, metadata.partition), metadata.offset)
        return metadata

    def send_changelog(partition: int | None, key: Any, value: Any, *args: Any, **kwargs: Any
                       ) -> asyncio.Future[Any]:
        if partition is None:   # Faust passes the current record's: tables are written
            raise RuntimeError(f"{topic}: a table written outside a record's processing")
        done = _Sent(partition)
        task = asyncio.ensure_future(send(partition, key, value))
        task.add_done_callback(done.follow)
        return done

    return send_changelog


def highwaters_asked_under_transactions(consumer: Any) -> None:
    """Make table recovery ask the broker for each changelog partition's end (its last
    stable offset: the client reads committed) under exactly-once, as it does otherwise.
    Faust then reads the client's cached last stable offset instead, which is -1 until the
    partition was fetched once, and a worker restarting with local tables stopped at once
    ("persisted offset ... is higher than the last offset in that topic (highwater)
    (280 > -1)", seen on the first kill of a two-worker soak)."""
    thread = consumer._thread

    async def highwaters(partitions: list[Any]) -> Any:   # on the client's own loop
        return await thread._ensure_consumer().end_offsets(partitions)

    thread._highwaters = highwaters


def routing_without_producer_metadata(app: Any, partitions: int,
                                      partition_of: Callable[[bytes, int], int]) -> None:
    """Let the API find a key's owner when Faust's plain producer has never written the
    table's changelog (under exactly-once the transactional producers write it): Faust's
    router asks that producer's metadata for the key's partition, and without it every
    forwarded request failed with HTTP 500 (TypeError). The partition is then computed as
    every StreamRec producer computes it (murmur2, ``partitions``)."""
    producer = app.producer
    key_partition = producer.key_partition

    def with_fallback(topic: str, key: bytes) -> Any:
        try:
            return key_partition(topic, key)
        except TypeError:   # no metadata for ``topic`` in the plain producer
            return TP(topic, partition_of(key, partitions))

    producer.key_partition = with_fallback


class TransactionalTopic:
    """An output topic co-partitioned with the input topic ``source`` (keyed alike, as many
    partitions), whose records go into the transaction of their input partition: Faust's
    own ``topic.send`` under exactly-once puts a record in a transaction only when the
    worker consumes that topic, and sends every other one outside all transactions
    (faust-streaming#177), where it survives the abort of the transaction its input and
    state were in."""

    def __init__(self, app: Any, topic: Any, source: str, partitions: int,
                 partition_of: Callable[[bytes, int], int]) -> None:
        self._app, self._topic, self._source = app, topic, source
        self._partitions, self._partition_of = partitions, partition_of

    def get_topic_name(self) -> str:
        return str(self._topic.get_topic_name())

    async def send(self, *, key: bytes, value: bytes | None) -> Any:
        partition = self._partition_of(key, self._partitions)
        return await send_in_transaction_of(self._app, self._source, partition,
                                            self.get_topic_name(), key, value, partition)


async def send_in_transaction_of(app: Any, source: str, source_partition: int, topic: str,
                                 key: bytes | None, value: bytes | None, partition: int
                                 ) -> Any:
    """Send a record to ``topic``/``partition`` in the transaction of input partition
    ``source``/``source_partition`` (committed or aborted with that partition's offsets)."""
    group = app.assignor.group_for_topic(source)
    return await app.consumer.transactions.producer.send(
        topic, key, value, partition, None, None,
        transactional_id=f"{app.conf.id}-{group}-{source_partition}")


class EvidenceSends:
    """Where a batch's item evidence goes, one record per item partition. ``source``
    (exactly-once): each record is sent in the transaction of the input partition whose
    events it sums, so a killed worker's uncommitted evidence is aborted with its input
    offsets and state, and what its replacement reads again is counted once (the owner
    reads committed records only); without, records go out at-least-once with the plain
    producer (a kill -9 may then count the evidence of the batches in flight twice, or
    not at all)."""

    def __init__(self, app: Any, topic: Any, source: str | None) -> None:
        self._app, self._topic, self._source = app, topic, source

    @property
    def per_input_partition(self) -> bool:
        """Whether a batch's evidence must be summed per input partition."""
        return self._source is not None

    async def send(self, value: bytes, partition: int, source_partition: int | None) -> Any:
        if self._source is None:
            return await self._topic.send(key=None, value=value, partition=partition)
        if source_partition is None:
            raise ValueError("evidence under exactly-once needs its input partition")
        return await send_in_transaction_of(
            self._app, self._source, source_partition, str(self._topic.get_topic_name()),
            None, value, partition)


class OutsideTransactions:
    """An output topic sent to at-least-once under exactly-once, with the plain producer:
    Faust puts a record for a topic the worker consumes into the transaction of its
    *destination* partition, which only that partition's owner has; for a topic not
    co-partitioned with the input (the one-partition ``examples`` topic every worker sends
    to; a record rerouted to its key's partition) every other worker's sends then fail
    (measured: ProducerFenced on each)."""

    def __init__(self, app: Any, topic: Any) -> None:
        self._app, self._topic = app, topic

    def get_topic_name(self) -> str:
        return str(self._topic.get_topic_name())

    async def send(self, *, key: bytes | None = None, value: bytes | None = None,
                   partition: int | None = None, headers: Any = None) -> Any:
        return await self._app.producer.send(self.get_topic_name(), key, value, partition,
                                             None, headers)


class _Sent(asyncio.Future[Any]):
    """A transactional changelog send as Faust's table expects it back (it reads the
    record's partition from ``.message.partition``)."""

    def __init__(self, partition: int) -> None:
        super().__init__()
        self.message = _Message(partition)

    def follow(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            self.cancel()
        elif (error := task.exception()) is not None:
            self.set_exception(error)
        else:
            self.set_result(task.result())


@dataclass(frozen=True)
class _Message:
    partition: int


@dataclass(frozen=True)
class _Held:
    """What a held changelog write gives Faust's table back: the record's partition."""

    message: _Message


def _size(data: Any) -> int:
    """Bytes of a raw key or value (StreamRec's tables hold bytes; a tombstone is None)."""
    return len(data) if isinstance(data, bytes | bytearray) else 0


def bounded_web_connections(app: Any, idle_seconds: float, max_headers: int = 64) -> None:
    """Faust's aiohttp server with limits it does not set: a connection that sends no
    complete request for ``idle_seconds`` (from its start, or since its last response) is
    closed (aiohttp's default waits an hour, so idle or half-sent connections pile up), and
    a request may carry at most ``max_headers`` headers of at most 8 KiB each."""
    from aiohttp.web import AppRunner

    web = app.web
    web._runner = AppRunner(web.web_app, access_log=None, keepalive_timeout=idle_seconds,
                            max_headers=max_headers, max_line_size=8190,
                            max_field_size=8190)


def recovery_seeks_from_the_start_when_unsure(app: Any) -> None:
    """Make table recovery seek a changelog partition whose starting offset it does not
    know (None: a standby partition added after its offsets were read, in a rebalance) to
    the partition's beginning, instead of crashing the worker: aiokafka refuses to seek to
    None, and Faust's recovery service crashed with "Offset must be a positive integer"
    (measured: a rolling restart of two workers). Reading from the beginning only costs
    time; what it reads is the changelog, which is right from any point."""
    recovery = app.tables.recovery
    seek = recovery._seek_offsets

    async def seek_known(consumer: Any, tps: set[Any], offsets: Any, title: str) -> None:
        for tp in tps:
            if offsets.get(tp) is None or offsets[tp] < -1:
                offsets[tp] = -1   # Faust's own "from the start"
        await seek(consumer, tps, offsets, title)

    recovery._seek_offsets = seek_known


def cleared_buffers_are_read_again(app: Any, topics: set[str]) -> None:
    """Seek the input partitions back to their committed offsets whenever Faust's flow
    control, resuming, drops records of ``topics`` (the input topics) from the streams'
    buffers.

    Every ``flow_control.resume()`` clears the streams' buffers, and table recovery resumes
    the flow more than once: the last time after it has sought the stream partitions to
    their committed offsets and the fetch loop has started reading from there. What was
    delivered in between and not yet taken by an agent was dropped with the consumer's
    position past it, never to be read again (measured: the crash soak lost 68 events, a
    run of ~60 offsets of one partition, right after such a recovery; deliveries run
    inline fill the buffer a fetched batch at a time, Faust's own a record per round of
    the event loop). The seek is counted at once (:func:`fetches_never_outlive_a_seek`),
    so nothing fetched before it lands is handed out; what the agents had already taken is
    processed, and read again after the seek it is dropped as a duplicate."""
    flow = app.flow_control
    resume = flow.resume

    def resume_and_read_again() -> None:
        dropped = sum(1 for queue in list(flow._queues) for item in list(queue._queue)
                      if getattr(getattr(item, "message", None), "topic", None) in topics)
        resume()
        if dropped:
            log.info("resuming the flow dropped %d buffered input records: the input "
                     "partitions are sought back to their committed offsets", dropped)
            seek = asyncio.ensure_future(app.consumer.perform_seek())
            seek.add_done_callback(_seek_done)

    flow.resume = resume_and_read_again


def _seek_done(seek: asyncio.Future[Any]) -> None:
    if not seek.cancelled() and seek.exception() is not None:
        log.warning("seeking back after the flow resumed failed (%r): the next rebalance "
                    "seeks again", seek.exception())


def deliveries_run_inline(consumer: Any) -> None:
    """Hand each fetched record to the streams without three tasks and an ``asyncio.wait``.

    Faust's fetch loop delivers every record as
    ``await self.wait_first(callback(message), self.suspend_flow.wait())``: the delivery
    (into the channels' queues) raced against a rebalance suspending the flow, so a delivery
    stuck on a full queue or on flow control is given up when the flow is suspended. That
    costs tasks for the delivery, the suspension, the consumer's stop and crash, and an
    ``asyncio.wait``, for every record, though a delivery almost never waits. Here the
    delivery is run at once, up to its first wait: one that finishes without waiting (the
    queue had room, the flow was on) is done, exactly as if its task had won the race; one
    that has to wait is raced against the suspension as Faust does, resumed where it
    stopped (:func:`_resumed`). Only that call is changed (two coroutines, no timeout: the
    consumer's one other use passes one)."""
    race = consumer.wait_first

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:  # noqa: ASYNC109 - mode's
        if (len(coros) != 2 or timeout is not None or consumer.suspend_flow.is_set()
                or not all(asyncio.iscoroutine(c) for c in coros)):
            return await race(*coros, timeout=timeout)
        delivery, suspended = coros
        try:
            waits_on = delivery.send(None)
        except StopIteration as finished:
            suspended.close()
            return WaitResults([delivery], [finished.value], False)
        except BaseException:
            suspended.close()
            raise
        return await race(_resumed(delivery, waits_on), suspended)

    consumer.wait_first = wait_first


async def _resumed(coro: Any, waits_on: Any) -> Any:
    """Run ``coro`` on from a wait it yielded (``waits_on``: a future, or None for a bare
    yield), as an asyncio task would: wait for it, then send the coroutine on (it reads the
    future's result or exception itself); closed if this is cancelled."""
    try:
        while True:
            if waits_on is None:
                await asyncio.sleep(0)
            else:   # taken over from the coroutine, as a task takes a yielded future
                waits_on._asyncio_future_blocking = False
                with contextlib.suppress(Exception):
                    await waits_on   # its outcome is the coroutine's to read
            try:
                waits_on = coro.send(None)
            except StopIteration as finished:
                return finished.value
    except BaseException:
        coro.close()
        raise


def livelock_check_skips_unknown_positions(consumer: Any) -> None:
    """Faust's livelock detector reads every assigned partition's fetch position, which
    aiokafka asserts is known: a partition sought to its beginning (no committed offset)
    has none until the broker answers the offset reset, so with the broker down at that
    moment the assertion crashed the consumer and stopped the worker (`streamrec soak
    crash`, a broker kill right after a rebalance). Such a partition is skipped until it
    has a position: there is nothing to verify yet."""
    verify = consumer.verify_event_path

    def verify_known(now: float, tp: Any) -> None:
        try:
            verify(now, tp)
        except AssertionError:
            log.debug("livelock check skipped %s/%s: no fetch position yet", tp.topic,
                      tp.partition)

    consumer.verify_event_path = verify_known


def fetches_never_outlive_a_seek(consumer: Any, topics: set[str]) -> None:
    """Drop the records of ``topics`` (the input topics) from a fetched batch when the
    consumer's positions were reset while the fetch was under way (Faust seeks every input
    partition back to its committed offset after a rebalance): they come from before the
    seek: the input partitions are sought back to their committed offsets once more, and
    the records fetched again (what was processed since the last commit comes twice, and
    the duplicate filter drops it).

    Faust reads the rebalance generation after its fetch returns, so such a batch passed
    its own check, and its first record, far past the committed offset, opened a "gap"
    that Faust counts as processed: the records in between were committed without being
    processed, then dropped when fetched again as already read (measured: 3-26 of ~70,000
    events lost over four rolling restarts; faust-streaming issues 216 and 221 describe
    the same jump). Other topics' records are kept: table recovery reads the changelogs
    through the same consumer, from positions of its own, and must not lose any.

    A seek counts from the moment it is asked for (``consumer.perform_seek()`` is called)
    until its task is done: a fetch begun or handed out while one is pending is from the
    positions before it too."""
    asked, done = [0], [0]   # seeks asked for and seeks finished, so far
    perform_seek = consumer.perform_seek
    wait_next_records = consumer._wait_next_records

    def counted_seek() -> asyncio.Future[None]:
        # counted when asked for, not when it first runs: table recovery resumes the stream
        # partitions and hands the seek to a task, and the fetch loop, running first, could
        # hand out records from the positions before it (deliveries run inline hand out a
        # whole batch in one go). No loss was traced to this window alone; the soak's loss
        # was the buffer clear after the seek (cleared_buffers_are_read_again). Finished when
        # its task is done however it ends (a task cancelled before it ran never runs a
        # ``finally``), so a seek is never pending for good
        asked[0] += 1
        seek: asyncio.Future[None] = asyncio.ensure_future(perform_seek())
        seek.add_done_callback(_finished)
        return seek

    def _finished(_: object) -> None:
        done[0] += 1

    def now() -> tuple[int, int]:
        return asked[0], done[0]

    async def fetch_since_the_last_seek(timeout: float) -> tuple[Any, Any]:  # noqa: ASYNC109
        before = now()
        records, active = await wait_next_records(timeout)
        # a seek asked for or finished while it was under way, or one still pending when
        # it began: the fetch may come from the positions before that seek
        if records and (now() != before or before[0] != before[1]):
            kept = {tp: batch for tp, batch in records.items() if tp.topic not in topics}
            if len(kept) < len(records):
                log.info("records fetched across a seek dropped and fetched again%s: %s",
                         " (a seek pending)" if before[0] != before[1] or asked[0] != done[0]
                         else "", ", ".join(f"{tp.topic}/{tp.partition} "
                                   f"{getattr(batch[0], 'offset', '?')}+{len(batch)}"
                                   for tp, batch in records.items() if tp not in kept))
                # whether they came from before the seek or after it, the consumer's
                # positions are past them now: back to the committed offsets
                await perform_seek()
            records = kept
        return records, active

    getmany = consumer.getmany

    async def hand_out_since_the_last_seek(timeout: float  # noqa: ASYNC109 - Faust's
                                           ) -> AsyncIterator[tuple[Any, Any]]:
        # a seek may also come while a fetched batch is being handed out (table recovery
        # seeks the stream partitions after it resumes the flow): the rest of the batch is
        # from before it, and so is the read offset Faust sets after the message it was
        # handing out when the seek came; both would make it drop the records fetched again
        # as already read (measured: 7 of 14,140 events lost with a third worker joining)
        before, stale = now(), False
        seeks_asked, seeks_done = before
        async for tp, message in getmany(timeout=timeout):
            if (asked[0] != seeks_asked or done[0] != seeks_done) and tp.topic in topics:
                stale = True
                break
            yield tp, message
        if stale or now() != before:
            if stale:
                log.info("records handed out across a seek dropped and fetched again%s",
                         " (the seek asked for, not yet done)" if asked[0] != done[0] else "")
            await perform_seek()   # the read offsets and positions: the committed ones

    consumer.perform_seek = counted_seek
    consumer._wait_next_records = fetch_since_the_last_seek
    consumer.getmany = hand_out_since_the_last_seek


def commits_never_skip_an_offset(consumer: Any, topics: set[str],
                                 held: Callable[[Any, int, int], None] = lambda tp, c, f: None
                                 ) -> None:
    """Make an offset commit start exactly at the committed offset: offsets are committed
    only once the record at the committed offset is processed (acked) or known to be a gap
    in the partition (a transaction marker, a compacted record); ``held`` is told of each
    commit Faust would have made past an unprocessed record (tp, committed, first acked).

    Faust keeps the committed offset as Kafka does, the next offset to read, but its commit
    reads it as the last one processed: with C committed and C+1.. acked while C is not
    (a batch at C abandoned by a rebalance, the stream's later records acked before C
    comes again after the seek back), it committed past C, and a worker that stopped
    before C was processed again lost it for good (seen about once per rolling-restart run
    of the two-worker test, held now: `streamrec_commits_held_total`). Its read offset after a
    seek is likewise "next" where the gap detection reads "last", so a gap right at the
    committed offset was never recorded; both are read as Kafka means them here.

    And an input partition (of ``topics``) with no committed offset is sought to its
    beginning at every seek: Faust's seek leaves it where the fetcher was, so records
    fetched before a rebalance and dropped with the stream's buffers were never read again
    (measured: a rolling restart's first seconds lost the first records of two of four
    partitions, the same nine events in two runs)."""
    new_offset, perform_seek = consumer._new_offset, consumer.perform_seek

    def contiguous(tp: Any) -> int | None:
        committed, acked = consumer._committed_offset[tp], consumer._acked[tp]
        if committed is not None and acked:
            first = min(acked)
            gaps = consumer._gap[tp]
            if gaps:
                first = min(first, *(gap.begin for gap in gaps.overlap(0, max(acked) + 1)))
            if first > committed:
                held(tp, committed, first)
                return None
        result: int | None = new_offset(tp)
        return result

    async def add_gap(tp: Any, offset_from: int, offset_to: int) -> None:
        committed = consumer._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed)   # C itself may be the gap
        if offset_from <= offset_to:
            gaps = consumer._gap[tp]
            gaps.addi(offset_from, offset_to + 1)
            await asyncio.sleep(0)
            gaps.merge_overlaps()

    async def seek_and_read_from_committed() -> None:
        await perform_seek()
        read, committed = consumer._read_offset, consumer._committed_offset
        for tp, offset in list(read.items()):
            if offset is not None and offset > 0 and offset == committed[tp]:
                read[tp] = offset - 1   # the last offset read: C is still to come
        unread = sorted(tp for tp in consumer.assignment()
                        if tp.topic in topics and not committed[tp])
        if unread:
            # on the client's thread, in the client's own partition type
            await consumer._thread.seek_to_beginning(
                *(TopicPartition(tp.topic, tp.partition) for tp in unread))
            for tp in unread:
                read[tp] = None
            log.info("no committed offset for %s: read from the start",
                     ", ".join(f"{tp.topic}/{tp.partition}" for tp in unread))

    consumer._new_offset = contiguous
    consumer._add_gap = add_gap
    consumer.perform_seek = seek_and_read_from_committed


class StallWatch:
    """A watchdog for input partitions that stop being read: the last offset read has not
    moved for ``after`` seconds, outside rebalances and recovery, while records wait (the
    broker's end offset is past it, or past the fetch position of a partition not read
    since its assignment).

    Seen once in a full test run (2026-12-04): after the last of eight rolling restarts, one
    events partition of the restarted worker was never read again (3,195 events waited two
    minutes; the other partition it got was read). Faust takes a partition out of its
    fetch set while the stream's buffer is under pressure and puts it back when the buffer
    drains (``on_buffer_full``/``on_buffer_drop``); a partition left out of the fetch set,
    or paused in the client, is put back here (and said so, with what was wrong: the cause
    is still hunted); one that is in the fetch set is only reported."""

    def __init__(self, after: float = 15.0) -> None:
        self.after = after
        self._since: dict[Any, tuple[int | None, float]] = {}

    async def check(self, app: Any, topics: set[str], now: float,
                    ends: Ends | None = None) -> list[tuple[Any, dict[str, Any] | None]]:
        """The partitions not read for ``after`` seconds, each with what its consumer knows
        of it when records wait (stalled), or None when none waits (idle); each is then
        watched afresh. Whether records wait is asked of the broker (``ends``: the end
        offsets and fetch positions of the quiet partitions; by default the Kafka
        client's), so a partition never fetched since its assignment is seen too."""
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            self._since.clear()
            return []
        consumer = app.consumer
        read = getattr(consumer, "_read_offset", {})
        quiet = []
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            last, seen = read.get(tp), self._since.get(tp)
            if seen is None or seen[0] != last:
                self._since[tp] = (last, now)
            elif now - seen[1] >= self.after:
                quiet.append(tp)
        if not quiet:
            return []
        known = await (ends or _client_ends(consumer))(quiet)
        found: list[tuple[Any, dict[str, Any] | None]] = []
        for tp in quiet:
            last = read.get(tp)
            self._since[tp] = (last, now)
            end, position = known.get(tp, (0, 0))
            waiting = end - (last + 1 if last is not None else position)
            found.append((tp, _describe(consumer, tp, last, waiting) if waiting > 0 else None))
        return found


Ends = Callable[[list[Any]], Awaitable[dict[Any, tuple[int, int]]]]


def _client_ends(consumer: Any) -> Ends:
    """(end offset, fetch position) of partitions, from the Kafka client under Faust's."""
    async def ends(tps: list[Any]) -> dict[Any, tuple[int, int]]:
        client = _client(consumer)
        if client is None:
            return {}
        # The client lives on the consumer thread's own event loop: it is asked there
        # (as Faust's own ``position`` does); called from this loop it raises.
        async def ask() -> dict[Any, tuple[int, int]]:
            offsets = await client.end_offsets(tps)
            return {tp: (int(offsets[tp]), int(await client.position(tp))) for tp in tps}
        found: dict[Any, tuple[int, int]] = await consumer._thread.call_thread(ask)
        return found
    return ends


def _describe(consumer: Any, tp: Any, last: int | None, waiting: int) -> dict[str, Any]:
    active = getattr(consumer, "_active_partitions", None)
    client = _client(consumer)
    return {
        "last_read": last, "waiting": waiting,
        "in_fetch_set": active is None or tp in active,
        "buffered": tp in getattr(consumer, "_buffered_partitions", ()),
        "paused_by_faust": tp in getattr(consumer, "_paused_partitions", ()),
        "paused_in_client": client is not None and tp in client.paused(),
        "flow_active": bool(getattr(consumer, "flow_active", True)),
    }


def _client(consumer: Any) -> Any:
    """The aiokafka consumer under Faust's, if it is running."""
    thread = getattr(consumer, "_thread", None)
    return getattr(thread, "_consumer", None) if thread is not None else None


async def unstick(consumer: Any, tp: Any, found: dict[str, Any]) -> bool:
    """Put a stalled partition back in the fetch set and resume it in the client, when it
    was out of either; True when something was changed."""
    changed = False
    if not found["in_fetch_set"] or found["buffered"] or found["paused_by_faust"]:
        consumer._buffered_partitions.discard(tp)
        consumer._paused_partitions.discard(tp)
        if consumer._active_partitions is not None:
            consumer._active_partitions.add(tp)
        changed = True
    client = _client(consumer)
    if found["paused_in_client"] and client is not None:
        async def resume() -> None:    # on the client's own loop, as ``_client_ends``
            client.resume(tp)
        await consumer._thread.call_thread(resume)
        changed = True
    return changed
