"""Small pieces around the agents: dead-letter headers, metrics, topics, the Faust shim."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import faust
import pytest
from faust.streams import current_event

from app.broker.admin import STATE_TABLES, topic_specs
from app.broker.embedded import CLUSTER_ID_PREFIX, check_embedded
from app.contract.deadletter import deadletter_headers, read_headers
from app.contract.validate import Reason, Rejection
from app.metrics import Metrics
from app.settings import Settings
from app.worker.faust_compat import acting_as


def test_deadletter_headers_round_trip() -> None:
    headers = deadletter_headers(Rejection(Reason.OVERSIZE, "70000 bytes > limit"), "events",
                                 3, 42, 1_700_000_000_000)
    assert read_headers([*headers, ("other", b"x")]) == {
        "reason": "oversize", "detail": "70000 bytes > limit", "topic": "events",
        "partition": "3", "offset": "42", "received_at": "1700000000000",
    }


def test_every_metric_series_exists_from_the_start() -> None:
    metrics = Metrics.create()
    value = metrics.registry.get_sample_value
    for reason in Reason:
        assert value("streamrec_deadletters_total",
                     {"topic": "events", "reason": reason.value}) == 0
    assert value("streamrec_input_records_total", {"topic": "items", "outcome": "duplicate"}) == 0
    assert value("streamrec_events_total", {"type": "purchase"}) == 0


def test_user_keyed_topics_are_co_partitioned() -> None:
    specs = topic_specs(Settings(_env_file=None, partitions=6))
    assert {s.partitions for s in specs if s.name not in {"examples", "models"}} == {6}
    assert {s.partitions for s in specs if s.name in {"examples", "models"}} == {1}
    compacted = {s.name for s in specs if s.configs.get("cleanup.policy") == "compact"}
    changelogs = {f"streamrec-{table}-changelog" for table in STATE_TABLES}
    assert compacted == {"items", "users", "catalogue", "models"} | changelogs
    assert "item-evidence" in {s.name for s in specs}
    examples = next(s for s in specs if s.name == "examples")
    assert examples.configs == {"retention.ms": str(7 * 24 * 3600 * 1000)}


def test_a_foreign_broker_on_the_embedded_port_is_refused() -> None:
    settings = Settings(_env_file=None, broker_url="")
    check_embedded(settings, CLUSTER_ID_PREFIX + "abc")
    with pytest.raises(RuntimeError, match="something other than"):
        check_embedded(settings, "MkU3OEVBNTcwNTJENDM2Qk")
    check_embedded(Settings(_env_file=None, broker_url="k:9092"), "anything")


def test_acting_as_sets_faust_current_event_for_table_writes() -> None:
    class FakeEvent:
        pass

    event = FakeEvent()
    assert current_event() is None
    with acting_as(event):
        assert current_event() is event
    assert current_event() is None
    assert faust.__version__  # the shim is tied to faust-streaming's private context var


def test_consumer_lag_is_the_broker_end_less_the_committed_offset() -> None:
    from types import SimpleNamespace

    from faust.types import TP

    from app.worker.faust_compat import consumer_lag

    assigned = {TP("events", 0), TP("events", 1), TP("events", 2), TP("other", 0)}
    asked: list[set[TP]] = []

    async def ends(tps: list[TP]) -> dict[TP, tuple[int, int]]:
        asked.append(set(tps))
        # the fetch position (second) plays no part: records read ahead are not done
        return {TP("events", 0): (100, 95), TP("events", 1): (7, 7)}   # 2: no answer

    class Consumer:
        _committed_offset = {TP("events", 0): 90}   # 1: nothing committed yet

        def assignment(self) -> set[TP]:
            return assigned

    lags = asyncio.run(consumer_lag(SimpleNamespace(consumer=Consumer()), {"events"}, ends))
    assert lags == {("events", 0): 10, ("events", 1): 7}
    assert asked == [{TP("events", 0), TP("events", 1), TP("events", 2)}]


def test_kraft_cluster_ids_never_look_like_an_option() -> None:
    from app.broker.apache import new_cluster_id

    ids = {new_cluster_id() for _ in range(2000)}   # ~31 of 2000 would start with "-" otherwise
    assert len(ids) == 2000
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)


WINDOW = 0.15   # a batch's window (s); events come every 0.3 of it: slow enough that a
# loaded machine's scheduling (a few ms late here and there) does not decide a test


def _batch_sizes(waiting_on_broker: int | Callable[[], int], chunks: int = 10,
                 per_chunk: int = 60) -> list[int]:
    """take_batches over a Faust channel fed ``per_chunk`` events every 0.3 windows
    (``chunks`` times): the batch sizes, with ``waiting_on_broker`` records reported as not
    yet read."""
    import asyncio

    from app.worker.faust_compat import take_batches

    async def run() -> list[int]:
        app = faust.App("take-batches-test", broker="kafka://localhost:1", store="memory://")
        app.flow_control.resume()   # (a started app does this)
        channel = app.channel()
        stream = channel.stream()
        sizes: list[int] = []
        everything = asyncio.Event()

        async def consume() -> None:
            def behind(processed: dict[object, int]) -> int:
                return (waiting_on_broker() if callable(waiting_on_broker)
                        else waiting_on_broker)

            async for batch in take_batches(stream, 1000, WINDOW, 20 * WINDOW, behind):
                sizes.append(len(batch))
                if sum(sizes) >= per_chunk * chunks:
                    everything.set()

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        for _ in range(chunks):
            for value in range(per_chunk):
                await channel.send(value=value)
            await asyncio.sleep(0.3 * WINDOW)
        await everything.wait()
        task.cancel()
        # iterating a stream made the app's Kafka consumer, whose thread has a loop of its
        # own (never started here): close it
        app.consumer._thread.thread_loop.close()
        return sizes

    return asyncio.run(asyncio.wait_for(run(), 20))


def test_batches_grow_only_while_a_backlog_waits_on_the_broker() -> None:
    ordinary = _batch_sizes(waiting_on_broker=0)
    backlog = _batch_sizes(waiting_on_broker=5_000)
    assert sum(ordinary) == sum(backlog) == 600   # every event, once
    assert len(ordinary) >= 3                      # each batch closed after `within`
    assert max(backlog) > 2 * max(ordinary)        # kept filling while events kept coming


def test_batches_grow_on_a_machine_that_takes_events_in_slower_than_the_fixed_bar() -> None:
    """~50 events per window, under the tenth of BATCH_MAX (100) a fast machine takes
    in: the bar follows the batch's first window, so a backlog still grows batches."""
    ordinary = _batch_sizes(waiting_on_broker=0, chunks=20, per_chunk=15)
    backlog = _batch_sizes(waiting_on_broker=5_000, chunks=20, per_chunk=15)
    assert sum(ordinary) == sum(backlog) == 300
    assert max(ordinary) < 100
    assert max(backlog) > 2 * max(ordinary)


def test_batches_grow_only_while_the_backlog_shrinks() -> None:
    """A worker that does not gain on its backlog stops growing batches (else it would
    wait for slowly arriving records and stay behind); one that works it off keeps on."""
    remaining = iter(range(100_000, 0, -1_000))
    stuck = _batch_sizes(waiting_on_broker=5_000, chunks=40)
    shrinking = _batch_sizes(waiting_on_broker=lambda: next(remaining), chunks=40)
    assert sum(stuck) == sum(shrinking) == 2_400
    # only the first batch grew (to BATCH_MAX, 1,000): a batch that does not grow holds one
    # window's events (~200 here) and at most a window's more left in the channel when the
    # one before filled up
    assert sorted(stuck)[-2] < 500
    assert sorted(shrinking)[-2] >= 800     # every batch may grow (here to BATCH_MAX)



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_started_worker_or_broker_dies_with_the_process_that_started_it() -> None:
    """A killed benchmark or test run must leave nothing behind (die_with_parent)."""
    import subprocess
    import time

    code = ("import subprocess, sys, time\n"
            "from app.broker.embedded import die_with_parent\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " preexec_fn=die_with_parent)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()

    def state() -> str:   # Z: exited, waiting for init to reap it
        try:
            with open(f"/proc/{child}/status") as status:
                return next(line.split()[1] for line in status if line.startswith("State:"))
        except FileNotFoundError:
            return "gone"

    deadline = time.monotonic() + 10
    while state() not in ("Z", "gone") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state() in ("Z", "gone")


def _acked_after(finish_first_batch: bool) -> list[bool]:
    """take_batches over a Faust channel: whether each event of the first batch was acked
    once the caller either asked for the next batch or was stopped halfway through it."""
    import asyncio

    from app.worker.faust_compat import take_batches

    async def run() -> list[bool]:
        app = faust.App("take-batches-ack", broker="kafka://localhost:1", store="memory://")
        app.flow_control.resume()
        channel = app.channel()
        stream = channel.stream()
        first: list[object] = []
        batches = take_batches(stream, 1000, 0.05, 1.0, lambda processed: 0)

        async def consume() -> None:
            async for batch in batches:
                if first:
                    return
                first.extend(batch)
                if not finish_first_batch:
                    await asyncio.sleep(30)   # working on it when the stop comes

        task = asyncio.create_task(consume())
        for value in range(20):
            await channel.send(value=value)
        while not first:  # noqa: ASYNC110 - polling a test list
            await asyncio.sleep(0.01)
        if finish_first_batch:
            await channel.send(value=99)      # the caller goes on to a next batch
            await asyncio.wait_for(task, 5)
        else:
            await batches.aclose()            # what Faust's stream does when it stops
            task.cancel()
            # and nothing reads the channel after that: what comes stays there, unacked
            await channel.send(value=100)
            await asyncio.sleep(0.1)
            assert stream.channel.queue.qsize() == 1
        app.consumer._thread.thread_loop.close()
        return [event.message.acked for event in first]   # type: ignore[attr-defined]

    return asyncio.run(asyncio.wait_for(run(), 20))


def test_a_batch_is_acked_once_done_and_never_when_stopped_halfway() -> None:
    done = _acked_after(finish_first_batch=True)
    assert done
    assert all(done)
    halfway = _acked_after(finish_first_batch=False)
    assert halfway
    assert not any(halfway)   # its offsets are not committed: it is read again


def test_the_flush_before_a_commit_waits_for_every_changelog_record() -> None:
    import asyncio
    from types import SimpleNamespace

    from app.worker.faust_compat import flush_waits_for_changelogs

    written: list[tuple[str, int]] = []

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        sends: list[asyncio.Future[None]] = []

        def send_changelog(partition: int, key: bytes, value: bytes) -> asyncio.Future[None]:
            sends.append(loop.create_future())
            return sends[-1]

        async def buffer_flush() -> None:   # Faust's: gives up after 0.1 s per message
            order.append("producer flushed")

        table = SimpleNamespace(send_changelog=send_changelog)
        app = SimpleNamespace(producer=SimpleNamespace(flush=buffer_flush))
        flush_waits_for_changelogs(app, {"user-state": table},
                                   sent=lambda label, size: written.append((label, size)))
        table.send_changelog(0, b"k", b"v1")
        table.send_changelog(1, b"k", b"v2")

        async def broker() -> None:
            for future in sends:
                await asyncio.sleep(0.05)
                order.append("record acknowledged")
                future.set_result(None)

        acks = asyncio.create_task(broker())
        await app.producer.flush()
        order.append("commit")
        await acks
        # a record sent while a flush waits is not waited for: under load something is
        # always being sent, and the commit would never come
        table.send_changelog(2, b"k", b"v3")
        later = asyncio.create_task(app.producer.flush())
        await asyncio.sleep(0.01)
        table.send_changelog(3, b"k", b"v4")
        sends[2].set_result(None)
        await asyncio.wait_for(later, 1.0)
        order.append("second commit")
        return order

    assert asyncio.run(run()) == ["producer flushed", "record acknowledged",
                                  "record acknowledged", "commit", "producer flushed",
                                  "second commit"]
    assert written == [("user-state", 3)] * 4   # each record's key and value bytes, counted


def test_recovery_reads_a_changelog_partition_from_its_start_when_its_offset_is_unknown(
        ) -> None:
    import asyncio
    from collections import Counter
    from types import SimpleNamespace

    from app.worker.faust_compat import recovery_seeks_from_the_start_when_unsure

    seeks: list[dict[str, int]] = []

    async def seek_offsets(consumer: object, tps: set[str], offsets: Counter[str],
                           title: str) -> None:
        seeks.append({tp: offsets[tp] for tp in tps})   # aiokafka raises on None

    app = SimpleNamespace(tables=SimpleNamespace(
        recovery=SimpleNamespace(_seek_offsets=seek_offsets)))
    recovery_seeks_from_the_start_when_unsure(app)
    offsets: Counter[str] = Counter({"known": 41})
    offsets.setdefault("added-late", None)  # type: ignore[arg-type]
    asyncio.run(app.tables.recovery._seek_offsets(None, {"known", "added-late"}, offsets,
                                                  "standby"))
    assert seeks == [{"known": 41, "added-late": -1}]


def test_a_fetch_that_a_seek_overtook_is_dropped_and_fetched_again() -> None:
    import asyncio
    from types import SimpleNamespace

    from app.worker.faust_compat import fetches_never_outlive_a_seek

    async def run() -> list[object]:
        fetching = asyncio.Event()
        release = asyncio.Event()

        from faust.types import TP

        events, changelog = TP("events", 0), TP("log", 0)

        async def wait_next_records(timeout: float) -> tuple[object, object]:  # noqa: ASYNC109
            fetching.set()
            await release.wait()
            return {events: ["offset 900"], changelog: ["offset 7"]}, {events}

        seeks: list[str] = []

        async def perform_seek() -> None:   # back to the committed offset (say 500)
            seeks.append("seek")
            await asyncio.sleep(0)

        consumer = SimpleNamespace(perform_seek=perform_seek,
                                   _wait_next_records=wait_next_records, getmany=None)
        fetches_never_outlive_a_seek(consumer, {"events"})
        overtaken = asyncio.create_task(consumer._wait_next_records(1.0))
        await fetching.wait()
        await consumer.perform_seek()   # a rebalance, while the fetch is under way
        release.set()
        results = [(await overtaken)[0]]
        assert seeks == ["seek", "seek"]   # the rebalance's, then back to them again
        results.append((await consumer._wait_next_records(1.0))[0])   # no seek meanwhile
        assert len(seeks) == 2
        return results

    overtaken, later = asyncio.run(run())
    # the input topic's records are dropped, table recovery's (a changelog's) are kept
    assert [tp.topic for tp in overtaken] == ["log"]
    assert sorted(tp.topic for tp in later) == ["events", "log"]


def test_what_is_left_of_a_batch_handed_out_across_a_seek_is_dropped_and_read_again() -> None:
    import asyncio
    from types import SimpleNamespace

    from faust.types import TP

    from app.worker.faust_compat import fetches_never_outlive_a_seek

    events, changelog = TP("events", 0), TP("log", 0)
    seeks: list[str] = []

    async def perform_seek() -> None:   # back to the committed offsets
        seeks.append("seek")

    async def wait_next_records(timeout: float) -> tuple[object, object]:  # noqa: ASYNC109
        return {}, set()

    async def getmany(timeout: float):  # noqa: ASYNC109 - Faust's generator
        for offset in (586, 587, 588):
            yield events, offset
        yield changelog, 7

    consumer = SimpleNamespace(perform_seek=perform_seek, _wait_next_records=wait_next_records,
                               getmany=getmany)
    fetches_never_outlive_a_seek(consumer, {"events"})

    async def drain(seek_after: int | None) -> list[object]:
        handed: list[object] = []
        async for _, message in consumer.getmany(timeout=1.0):
            handed.append(message)
            if len(handed) == seek_after:
                await consumer.perform_seek()   # recovery seeks while the batch is handed out
        return handed

    # the seek came while 586 was handed out: 587 and 588 are from before it, dropped, and
    # the partitions sought back once more (586's read offset too)
    assert asyncio.run(drain(1)) == [586]
    assert seeks == ["seek", "seek"]
    seeks.clear()
    assert asyncio.run(drain(None)) == [586, 587, 588, 7]   # no seek: all of it
    assert seeks == []


def test_a_seek_counts_from_when_it_is_asked_for_not_from_when_its_task_runs() -> None:
    # table recovery resumes the stream partitions and hands perform_seek() to a task; the
    # fetch loop may run first: what it hands out then, and what it fetches while the seek
    # is pending, is from the positions before the seek
    import asyncio
    from types import SimpleNamespace

    from faust.types import TP

    from app.worker.faust_compat import fetches_never_outlive_a_seek

    events = TP("events", 0)
    seeks: list[str] = []

    async def perform_seek() -> None:
        seeks.append("seek")

    async def wait_next_records(timeout: float) -> tuple[object, object]:  # noqa: ASYNC109
        return {events: [900]}, {events}

    async def getmany(timeout: float):  # noqa: ASYNC109 - Faust's generator
        for offset in (586, 587, 588):
            yield events, offset

    consumer = SimpleNamespace(perform_seek=perform_seek, _wait_next_records=wait_next_records,
                               getmany=getmany)
    fetches_never_outlive_a_seek(consumer, {"events"})

    async def run() -> tuple[list[object], object, object]:
        handed: list[object] = []
        recovery: asyncio.Future[None] | None = None
        async for _, message in consumer.getmany(timeout=1.0):
            handed.append(message)
            if recovery is None:   # asked for, its task not yet run
                recovery = asyncio.ensure_future(consumer.perform_seek())
        assert seeks == ["seek"]   # the batch's own seek back; the recovery's not run yet
        pending = (await consumer._wait_next_records(1.0))[0]   # while it is pending
        assert recovery is not None
        await recovery
        after = (await consumer._wait_next_records(1.0))[0]
        return handed, pending, after

    handed, pending, after = asyncio.run(run())
    assert handed == [586]
    assert pending == {}
    assert after == {events: [900]}
    assert seeks == ["seek", "seek", "seek"]   # the batch's, the fetch's, the recovery's


def test_records_a_resumed_flow_clears_from_the_buffers_are_read_again() -> None:
    # Faust clears the streams' buffers at every resume of the flow, recovery's last one
    # after its seek: what was buffered then must be fetched again from the committed offsets
    import asyncio
    from types import SimpleNamespace

    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    from app.worker.faust_compat import cleared_buffers_are_read_again

    async def run() -> tuple[int, int]:
        flow = FlowControlEvent(initially_suspended=False)
        buffer: FlowControlQueue[object] = FlowControlQueue(flow_control=flow,
                                                            clear_on_resume=True)
        seeks: list[str] = []

        async def perform_seek() -> None:
            seeks.append("seek")

        app = SimpleNamespace(flow_control=flow,
                              consumer=SimpleNamespace(perform_seek=perform_seek))
        cleared_buffers_are_read_again(app, {"events"})
        buffer.put_nowait(SimpleNamespace(message=SimpleNamespace(topic="other")))
        flow.resume()            # nothing of the input topics dropped: no seek
        await asyncio.sleep(0)
        quiet = len(seeks)
        buffer.put_nowait(SimpleNamespace(message=SimpleNamespace(topic="events")))
        flow.resume()
        assert buffer.empty()    # Faust's clearing is kept
        await asyncio.sleep(0)
        return quiet, len(seeks)

    assert asyncio.run(run()) == (0, 1)


def test_the_livelock_check_skips_a_partition_without_a_position() -> None:
    from types import SimpleNamespace

    from faust.types import TP

    from app.worker.faust_compat import livelock_check_skips_unknown_positions

    checked: list[TP] = []

    def verify_event_path(now: float, tp: TP) -> None:
        if tp.partition == 1:
            raise AssertionError   # aiokafka: position is None (an offset reset pending)
        checked.append(tp)

    consumer = SimpleNamespace(verify_event_path=verify_event_path)
    livelock_check_skips_unknown_positions(consumer)
    for partition in (0, 1, 2):
        consumer.verify_event_path(0.0, TP("events", partition))
    assert [tp.partition for tp in checked] == [0, 2]


def test_a_partition_not_read_for_a_while_is_found_and_put_back_in_the_fetch_set() -> None:
    import asyncio
    from types import SimpleNamespace

    from faust.types import TP

    from app.worker.faust_compat import StallWatch, unstick

    stuck, moving, idle, never = (TP("events", n) for n in range(4))
    broker = {stuck: (500, 100), moving: (500, 500), idle: (41, 41), never: (80, 20)}

    class Consumer:
        _read_offset = {stuck: 99, moving: 99, idle: 40}   # never: not read since assigned
        _active_partitions = {moving, idle}                  # stuck and never: not fetched
        _buffered_partitions = {stuck}
        _paused_partitions: set[TP] = set()
        flow_active = True
        _thread = SimpleNamespace(_consumer=None)

        def assignment(self) -> set[TP]:
            return set(broker)

    async def ends(tps: list[TP]) -> dict[TP, tuple[int, int]]:
        return {tp: broker[tp] for tp in tps}

    done = asyncio.Event()
    done.set()
    app = SimpleNamespace(consumer=Consumer(), rebalancing=False,
                          tables=SimpleNamespace(recovery=SimpleNamespace(completed=done)))
    watch = StallWatch(after=15.0)

    def check(now: float) -> list[tuple[TP, dict[str, object]]]:
        return asyncio.run(watch.check(app, {"events", "other"}, now, ends))

    assert check(0.0) == []
    app.consumer._read_offset[moving] = 150             # this one is being read
    assert check(10.0) == []
    found = dict(check(16.0))
    assert set(found) == {stuck, never, idle}           # moving: moved
    assert found[idle] is None                          # quiet, but nothing waits
    stalled = {tp: seen for tp, seen in found.items() if seen is not None}
    assert stalled[stuck]["waiting"] == 400             # past the last offset read
    assert stalled[never]["waiting"] == 60              # past the fetch position
    assert not stalled[stuck]["in_fetch_set"]
    assert stalled[stuck]["buffered"]
    assert asyncio.run(unstick(app.consumer, stuck, stalled[stuck]))
    assert stuck in app.consumer._active_partitions
    assert not app.consumer._buffered_partitions
    assert check(20.0) == []                            # watched afresh
    app.rebalancing = True                               # never during a rebalance
    assert check(60.0) == []


def test_a_commit_never_skips_the_record_at_the_committed_offset() -> None:
    import asyncio
    from collections import defaultdict
    from types import MethodType, SimpleNamespace

    from aiokafka import TopicPartition
    from faust.transport.consumer import Consumer
    from faust.types import TP
    from intervaltree import IntervalTree

    from app.worker.faust_compat import commits_never_skip_an_offset

    tp, fresh = TP("events", 0), TP("events", 1)
    sought: list[TP] = []

    def consumer() -> SimpleNamespace:
        fake = SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set),
                               _gap=defaultdict(IntervalTree),
                               _committed_offset=defaultdict(lambda: None),
                               _read_offset=defaultdict(lambda: None))
        fake._new_offset = MethodType(Consumer._new_offset, fake)
        fake._add_gap = MethodType(Consumer._add_gap, fake)

        async def perform_seek() -> None:   # what Faust's does: both set to "next"
            fake._committed_offset[tp] = 10
            fake._read_offset[tp] = 10
            fake._read_offset[fresh] = 7          # fetched ahead, nothing committed

        async def seek_to_beginning(*tps: TopicPartition) -> None:
            if not all(isinstance(p, TopicPartition) for p in tps):   # as aiokafka's does
                raise TypeError("partitions must be TopicPartition instances")
            sought.extend(TP(p.topic, p.partition) for p in tps)
        fake.perform_seek = perform_seek
        fake._thread = SimpleNamespace(seek_to_beginning=seek_to_beginning)
        fake.assignment = lambda: {tp, fresh, TP("events-changelog", 1)}
        return fake

    # Faust alone: 10 committed (the next to read), 11 and 12 processed, 10 not: past it
    plain = consumer()
    plain._committed_offset[tp] = 10
    plain._acked[tp].extend([11, 12])
    assert plain._new_offset(tp) == 13

    held: list[tuple[int, int]] = []
    fixed = consumer()
    commits_never_skip_an_offset(fixed, {"events"}, lambda tp, committed, first:
                                 held.append((committed, first)))
    asyncio.run(fixed.perform_seek())
    assert fixed._read_offset[tp] == 9                  # the last read: 10 is still to come
    # an input partition with no commit is read from its start again, not from where the
    # fetcher was (what it fetched before the seek was dropped with the stream's buffers)
    assert sought == [fresh]
    assert fixed._read_offset[fresh] is None
    fixed._acked[tp].extend([11, 12])
    assert fixed._new_offset(tp) is None
    assert held == [(10, 11)]
    fixed._acked[tp].append(10)                         # 10 comes again and is processed
    assert fixed._new_offset(tp) == 13
    # a record that is not there (a transaction marker at 13): read jumps 12 -> 14
    fixed._committed_offset[tp] = 13
    asyncio.run(fixed._add_gap(tp, 13, 14))
    fixed._acked[tp].append(14)
    assert fixed._new_offset(tp) == 15


def test_open_transactions_holding_records_are_committed_without_offsets() -> None:
    # Faust commits a partition's transaction only with new offsets: records of a batch not
    # yet acknowledged stayed open across a rebalance, and table recovery (to the last
    # stable offset) put older state back under them (lists published twice)
    from types import SimpleNamespace

    from app.worker.faust_compat import commit_open_transactions

    calls: list[str] = []

    class Manager:
        def __init__(self, open_: bool, partitions: set[str], pending: set[str]) -> None:
            self.open, self.txn_partitions, self.pending = open_, partitions, pending

        def is_in_transaction(self) -> bool:
            return self.open

        def partitions_to_add(self) -> set[str]:
            return self.pending

    class Client:
        def __init__(self, tid: str, manager: Manager) -> None:
            self.tid, self._txn_manager = tid, manager

        async def commit_transaction(self) -> None:
            calls.append(f"commit {self.tid}")

        async def begin_transaction(self) -> None:
            calls.append(f"begin {self.tid}")

    clients = {
        "written": Client("written", Manager(True, {"recommendations-0"}, set())),
        "sending": Client("sending", Manager(True, set(), {"user-state-changelog-1"})),
        "empty": Client("empty", Manager(True, set(), set())),      # nothing to commit
        "ended": Client("ended", Manager(False, set(), set())),     # committed, not begun
    }
    producer = SimpleNamespace(_transaction_producers=clients,
                               _trn_locks={tid: asyncio.Lock() for tid in clients})
    app = SimpleNamespace(consumer=SimpleNamespace(
        transactions=SimpleNamespace(producer=producer)))
    assert asyncio.run(commit_open_transactions(app)) == 2
    assert calls == ["commit written", "begin written", "commit sending", "begin sending"]
    calls.clear()
    assert asyncio.run(commit_open_transactions(app, start_new_transaction=False)) == 2
    assert calls == ["commit written", "commit sending"]   # a stop: none begun again


def test_held_changelog_writes_send_each_keys_newest_value_at_the_commit() -> None:
    import asyncio
    from types import SimpleNamespace

    from app.worker.faust_compat import flush_waits_for_changelogs, write_through

    written: list[tuple[str, int]] = []
    replaced: list[str] = []

    async def run() -> tuple[list[tuple[int, bytes, bytes | None]], list[str]]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        sends: list[tuple[int, bytes, bytes | None]] = []

        def send_changelog(partition: int, key: bytes, value: bytes | None
                           ) -> asyncio.Future[None]:
            sends.append((partition, key, value))
            future = loop.create_future()
            loop.call_later(0.02, future.set_result, None)   # the broker's acknowledgement
            future.add_done_callback(lambda _: order.append(f"acked {key.decode()}"))
            return future

        async def buffer_flush() -> None:
            order.append("producer flushed")

        table = SimpleNamespace(send_changelog=send_changelog)
        app = SimpleNamespace(producer=SimpleNamespace(flush=buffer_flush))
        flush_waits_for_changelogs(app, {"user-state": table}, buffer_bytes=1_000,
                                   sent=lambda label, size: written.append((label, size)),
                                   replaced=replaced.append)
        back = table.send_changelog(0, b"a", b"1")
        assert back.message.partition == 0   # what Faust's table reads back
        table.send_changelog(1, b"b", b"1")
        table.send_changelog(0, b"a", b"22")     # replaces a's held write
        table.send_changelog(0, b"c", b"1")
        table.send_changelog(0, b"c", None)      # a deletion replaces c's write too
        assert sends == []                        # nothing sent before the commit
        table.send_changelog(3, b"gone", b"state")
        with write_through():                     # forgetting: at once, the held dropped
            table.send_changelog(3, b"gone", None)
        assert sends == [(3, b"gone", None)]
        sends.clear()
        await app.producer.flush()
        order.append("commit")
        # past the bound, the oldest held writes go at once
        table.send_changelog(2, b"big", b"x" * 600)
        table.send_changelog(2, b"bigger", b"y" * 600)
        assert sends[-1] == (2, b"big", b"x" * 600)
        return sends, order

    sends, order = asyncio.run(run())
    # b, a, c in order of their last write; a with its newest value, c as its tombstone
    assert sends[:3] == [(1, b"b", b"1"), (0, b"a", b"22"), (0, b"c", None)]
    assert order[-1] == "commit"
    assert order[:1] == ["producer flushed"]
    assert {"acked a", "acked b", "acked c"} <= set(order[:-1])   # before the commit
    assert replaced == ["user-state", "user-state"]
    assert written[1:4] == [("user-state", 2), ("user-state", 3), ("user-state", 1)]


def test_without_a_buffer_every_changelog_write_is_sent_at_once() -> None:
    from types import SimpleNamespace

    from app.worker.faust_compat import flush_waits_for_changelogs

    sends: list[bytes] = []

    class Done:
        def add_done_callback(self, callback: object) -> None:
            pass

    table = SimpleNamespace(send_changelog=lambda p, k, v: sends.append(v) or Done())
    flush_waits_for_changelogs(SimpleNamespace(producer=SimpleNamespace(flush=None)),
                               {"user-state": table})
    table.send_changelog(0, b"a", b"1")
    table.send_changelog(0, b"a", b"2")
    assert sends == [b"1", b"2"]


def test_faust_still_delivers_each_record_through_the_race_deliveries_run_inline_replaces(
) -> None:
    """deliveries_run_inline changes one call of Faust's fetch loop; if an upgrade of Faust
    delivers records some other way, the patch would silently do nothing (the intake would
    cost ~2x again): fail here instead."""
    import inspect

    from faust.transport.consumer import Consumer

    source = inspect.getsource(Consumer._drain_messages)
    assert "self.wait_first(" in source
    assert "callback(message), self.suspend_flow.wait()" in " ".join(source.split())


def test_a_delivery_that_need_not_wait_runs_inline_and_one_that_waits_races_the_suspension(
) -> None:
    """deliveries_run_inline: Faust's fetch loop races each delivery against the flow's
    suspension; a delivery that finishes without waiting is run at once (no race), one that
    waits is raced as before, resumed where it stopped, and given up (closed) when the
    flow is suspended first."""
    import asyncio

    from mode import Service

    from app.worker.faust_compat import deliveries_run_inline

    async def run() -> None:
        consumer = Service()
        consumer.suspend_flow = asyncio.Event()   # type: ignore[attr-defined]
        races: list[int] = []
        race = consumer.wait_first

        async def counted(*coros: object, timeout: object = None) -> object:  # noqa: ASYNC109
            races.append(len(coros))
            return await race(*coros, timeout=timeout)

        consumer.wait_first = counted   # type: ignore[method-assign]
        deliveries_run_inline(consumer)
        delivered: list[str] = []
        room = asyncio.Event()
        closed: list[str] = []

        async def deliver(name: str, wait: bool) -> str:
            try:
                if wait:
                    await room.wait()
                delivered.append(name)
                return name
            except GeneratorExit:
                closed.append(name)
                raise

        def suspended() -> object:
            return consumer.suspend_flow.wait()   # type: ignore[attr-defined]

        result = await consumer.wait_first(deliver("a", False), suspended())
        assert delivered == ["a"]
        assert races == []
        assert list(result.results) == ["a"]
        assert not result.stopped

        waiting = asyncio.ensure_future(consumer.wait_first(deliver("b", True), suspended()))
        await asyncio.sleep(0.01)
        assert delivered == ["a"]
        assert races == [2]
        room.set()
        result = await asyncio.wait_for(waiting, 1)
        assert delivered == ["a", "b"]
        assert list(result.results) == ["b"]

        room.clear()
        stuck = asyncio.ensure_future(consumer.wait_first(deliver("c", True), suspended()))
        await asyncio.sleep(0.01)
        consumer.suspend_flow.set()   # type: ignore[attr-defined]   # a rebalance
        await asyncio.wait_for(stuck, 1)
        await asyncio.sleep(0.01)
        assert delivered == ["a", "b"]
        assert closed == ["c"]

        # the consumer's other use (one coroutine) and a suspended flow go the old way
        races.clear()
        await consumer.wait_first(deliver("d", False), suspended())
        assert races == [2]

    asyncio.run(asyncio.wait_for(run(), 10))


def test_batches_end_when_faust_ends_the_channel_on_a_stop() -> None:
    """On a stop Faust throws StopAsyncIteration into a stream's channel: the batches end
    there (the agent returns, it does not crash and get restarted mid-stop), and what was
    taken but not handed out is not acked."""
    import asyncio

    from app.worker.faust_compat import take_batches

    async def run() -> None:
        app = faust.App("take-batches-end", broker="kafka://localhost:1", store="memory://")
        app.flow_control.resume()
        channel = app.channel()
        stream = channel.stream()
        batches: list[int] = []

        async def consume() -> None:
            async for batch in take_batches(stream, 1000, 0.05, 1.0, lambda processed: 0):
                batches.append(len(batch))

        task = asyncio.create_task(consume())
        for value in range(5):
            await channel.send(value=value)
        while not batches:  # noqa: ASYNC110 - polling a test list
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)                      # idle: waiting for the next event
        stream.channel.queue._throw(StopAsyncIteration())   # type: ignore[attr-defined]
        await asyncio.wait_for(task, 5)               # ended, no RuntimeError
        assert batches == [5]
        task = asyncio.create_task(consume())         # and while a window is open
        await channel.send(value=5)
        await asyncio.sleep(0.01)
        stream.channel.queue._throw(StopAsyncIteration())   # type: ignore[attr-defined]
        await asyncio.wait_for(task, 5)
        app.consumer._thread.thread_loop.close()

    asyncio.run(asyncio.wait_for(run(), 20))
