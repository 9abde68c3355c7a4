"""Starting a worker: broker readiness, topics, local-state hygiene, then Faust."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import faust

from app.broker.admin import cluster_id, ensure_topics
from app.broker.embedded import check_embedded, start_if_needed
from app.contract.partitioning import partition_of
from app.contract.records import Event, Feedback, UserProfile
from app.core.attribution import decode_shown, encode_shown, slot_in, slot_key
from app.core.state import ProfileState, Shown, StateCodec, UserState
from app.encoder.runtime import Encoder
from app.errors import SettingError
from app.logs import configure_logging
from app.metrics import Metrics
from app.settings import Settings
from app.worker import agents, web
from app.worker.declarations import Declarations, declare
from app.worker.faust_compat import (
    EvidenceSends,
    OutsideTransactions,
    TransactionalTopic,
    acting_as,
    bounded_web_connections,
    cleared_buffers_are_read_again,
    commits_never_skip_an_offset,
    deliveries_run_inline,
    fetches_never_outlive_a_seek,
    flush_waits_for_changelogs,
    highwaters_asked_under_transactions,
    livelock_check_skips_unknown_positions,
    recovery_seeks_from_the_start_when_unsure,
    routing_without_producer_metadata,
)
from app.worker.feedback import FeedbackLoop
from app.worker.pipeline import Pipeline, load_sequence_model, make_recommender
from app.worker.results import KeyResult

log = logging.getLogger(__name__)


def reset_state_if_cluster_changed(settings: Settings, current: str) -> bool:
    """Wipe local tables built against another cluster (an embedded broker restarted, or the
    data dir was pointed at a new cluster): their changelog no longer exists, so the local
    copy would be state from nowhere. Returns True when the tables were wiped."""
    marker = settings.data_dir / "cluster-id"
    tables = settings.data_dir / "faust"
    previous = marker.read_text().strip() if marker.exists() else None
    wiped = False
    if previous != current and tables.exists():
        shutil.rmtree(tables)
        wiped = True
        log.warning("local tables were built against another cluster: reset, will recover")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(current + "\n")
    return wiped


UNCLEAN = "running"   # in the data dir while a worker runs; left behind by a kill


def reset_state_after_unclean_stop(settings: Settings) -> bool:
    """With exactly-once processing, wipe the local tables of a worker that did not stop
    cleanly (killed, crashed, out of time): they hold the writes of its last, aborted
    transaction, which the changelog (read committed) does not; kept, they would make the
    input re-read after the kill look already applied, and its recommendations (aborted
    with the transaction) would never be published. The tables recover from the committed
    changelog instead, as on an empty disk. Marks the data dir as in use; a clean stop
    clears the mark (:func:`stopped_cleanly`). Returns True when the tables were wiped."""
    marker = settings.data_dir / UNCLEAN
    tables = settings.data_dir / "faust"
    wiped = False
    if settings.exactly_once and marker.exists() and tables.exists():
        shutil.rmtree(tables)
        wiped = True
        log.warning("the last run did not stop cleanly: local tables reset (exactly-once: "
                    "they may hold an aborted transaction's writes), will recover")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text("a worker runs on this data dir (or was killed)\n")
    return wiped


def stopped_cleanly(settings: Settings) -> None:
    (settings.data_dir / UNCLEAN).unlink(missing_ok=True)


async def prepare(settings: Settings) -> None:
    current = await cluster_id(settings)
    check_embedded(settings, current)
    created = await ensure_topics(settings)
    if created:
        log.info("created topics: %s", ", ".join(created))
    reset_state_if_cluster_changed(settings, current)
    reset_state_after_unclean_stop(settings)


def build(settings: Settings, metrics: Metrics | None = None) -> Declarations:
    decl = declare(settings)
    examples, models, recommendations = decl.examples, decl.models, decl.recommendations
    if settings.exactly_once:
        # Faust reads whether it runs transactions once, when its consumer is made, as
        # "exactly_once and running in a worker"; it is made below, before Faust's Worker
        # says it runs in one, so exactly_once would silently run at-least-once
        decl.app.in_worker = True
        # the learner's topics at-least-once; the lists in their input's transaction
        examples, models = (OutsideTransactions(decl.app, decl.examples),
                            OutsideTransactions(decl.app, decl.models))
        recommendations = TransactionalTopic(decl.app, decl.recommendations,
                                             settings.topic_events, settings.partitions,
                                             partition_of)
    metrics = metrics or Metrics.create(variants=tuple(settings.ab_test().shares))
    encoder = Encoder(settings.model_dir())
    sequence_model = load_sequence_model(settings)
    recommender = make_recommender(settings, encoder.dimension, sequence_model)
    profile_codec = StateCodec(ProfileState)

    user_codec = StateCodec(UserState)

    def profile_of(key: bytes) -> UserProfile | None:
        return profile_codec.decode(decl.profile_state.get(key)).profile

    def user_of(key: bytes) -> UserState:
        return user_codec.decode(decl.user_state.get(key))

    def remember_shown(result: KeyResult[UserState, Event], shown: Shown) -> None:
        slot = slot_in(shown.rec_id)
        assert slot is not None   # every list's rec_id names its slot (recommend_after)
        with acting_as(result.last_event):   # the feedback table's partition is the user's
            decl.feedback_state[slot_key(result.key, slot)] = encode_shown(shown)

    def remembered(feedback: Feedback) -> Shown | None:
        slot = slot_in(feedback.rec_id)
        if slot is None:
            return None
        key = slot_key(decl.user_key(feedback.user_id.encode()), slot)
        return decode_shown(decl.feedback_state.get(key))

    feedback = FeedbackLoop(settings, metrics, recommender.params, recommender.sources,
                            encoder.manifest.model_name, examples, models,
                            encoder.dimension, remembered)
    feedback.catalogue = recommender.catalogue.index
    evidence = None
    if settings.global_items:   # to every item partition, in its input's transaction
        evidence = EvidenceSends(decl.app, decl.evidence,
                                 settings.topic_events if settings.exactly_once else None)
    pipeline = Pipeline(settings, metrics, encoder, recommender, recommendations,
                        decl.catalogue, feedback, profiles=profile_of, users=user_of,
                        remember=remember_shown, sequence_model=sequence_model,
                        evidence_topic=evidence)
    health = agents.Health()
    agents.attach(decl, metrics, pipeline, health)
    flush_waits_for_changelogs(
        decl.app, decl.tables(),
        sent=lambda table, size: metrics.written_bytes.labels(table).inc(size),
        transactional=settings.exactly_once,
        buffer_bytes=round(settings.changelog_buffer_mb * 1024 * 1024),
        replaced=lambda table: metrics.changelog_replaced.labels(table).inc())
    recovery_seeks_from_the_start_when_unsure(decl.app)
    bounded_web_connections(decl.app, settings.web_idle_timeout_seconds)
    told: set[tuple[Any, int]] = set()

    def held(tp: Any, committed: int, first: int) -> None:
        metrics.commits_held.labels(tp.topic).inc()
        if (tp, committed) not in told:   # once per offset: commits are tried every few s
            told.add((tp, committed))
            log.warning("%s/%d: commit held at %d until that record is processed (acked "
                        "from %d on)", tp.topic, tp.partition, committed, first)

    inputs = set(settings.input_topics())
    commits_never_skip_an_offset(decl.app.consumer, inputs, held)   # before the seek wrapper
    fetches_never_outlive_a_seek(decl.app.consumer, inputs)
    cleared_buffers_are_read_again(decl.app, inputs)   # after: its seek is counted
    livelock_check_skips_unknown_positions(decl.app.consumer)
    deliveries_run_inline(decl.app.consumer)
    if settings.exactly_once:
        highwaters_asked_under_transactions(decl.app.consumer)
        routing_without_producer_metadata(decl.app, settings.partitions, partition_of)
    web.attach(decl, metrics, pipeline, ready=lambda: (pipeline.catalogue_synced.is_set()
                                                        and feedback.synced.is_set()
                                                        and pipeline.item_stats_synced.is_set()
                                                        and health.ok))
    return decl


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is absent on Windows
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def one_blas_thread() -> None:
    """Keep numpy's BLAS to the calling thread. A worker's products are small (a user
    against a few thousand items); OpenBLAS's helper threads spin between them, and on two
    cores shared with Kafka they cost more than they save: 3,830 events per CPU-second
    with them, 7,325 without (BENCHMARKS.md, pipeline). Threads of ONNX Runtime are
    configured with the encoder."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


PAST_DEADLINE_EXIT = 3
"""The exit code of a worker that ended itself at its stop deadline."""


class StopDeadline:
    """Ends the process ``seconds`` after it is armed, unless it exits first. Faust's stop
    waits on the broker; with the broker gone it retries for a minute and more (measured:
    62 s), past any orchestrator's patience. Ending here is what a SIGKILL would do, done
    sooner, logged, and with ``before_exit`` run first (the embedded broker is stopped)."""

    def __init__(self, seconds: float, before_exit: Callable[[], None] = lambda: None,
                 exit_: Callable[[int], None] = os._exit) -> None:
        self.seconds = seconds
        self.before_exit = before_exit
        self._exit = exit_
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def arm(self, why: str) -> None:
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Timer(self.seconds, self._expired, args=(why,))
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def _expired(self, why: str) -> None:
        log.error("stop deadline: still stopping %.0f s after %s (the broker is probably "
                  "gone); ending now, with what a SIGKILL would leave (the changelog "
                  "restores the tables, uncommitted offsets are processed again)",
                  self.seconds, why)
        try:
            self.before_exit()
        except Exception:   # ending anyway
            log.exception("stop deadline: cleaning up before the exit failed")
        finally:
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            self._exit(PAST_DEADLINE_EXIT)


class Worker(faust.Worker):
    """Faust's worker with a :class:`StopDeadline`, armed when a signal asks it to stop
    and when it shuts down for any other reason."""

    def __init__(self, *args: Any, deadline: StopDeadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _schedule_shutdown(self, signal_: signal.Signals) -> None:
        self.deadline.arm(signal_.name)
        super()._schedule_shutdown(signal_)

    def on_worker_shutdown(self) -> None:
        self.deadline.arm("the worker began to shut down")
        super().on_worker_shutdown()


def faust_worker(app: Any, loop: asyncio.AbstractEventLoop, settings: Settings,
                 before_exit: Callable[[], None] = lambda: None) -> Worker:
    """Faust's worker for ``app``, logging as every StreamRec process does (app.logs), with
    the stop deadline of ``settings``."""
    configure_logging(settings.log_level)
    return Worker(app, loop=loop, loglevel=settings.log_level, quiet=True,
                  redirect_stdouts=False, override_logging=False,
                  deadline=StopDeadline(settings.stop_deadline_seconds, before_exit))


def run_worker(settings: Settings) -> None:
    """Run one worker until it is stopped (SIGINT/SIGTERM). With no broker configured it
    refuses to start unless the embedded broker is allowed (``embedded_broker``); then it
    starts that broker first when none is listening on the embedded port."""
    if settings.embedded and not settings.embedded_broker:
        raise SettingError(
            "STREAMREC_BROKER_URL is not set: set it to your Kafka's bootstrap servers "
            "(host:port[,host:port...]), or run `streamrec worker --embedded` "
            "(STREAMREC_EMBEDDED_BROKER=true) for the memory-only development broker")
    if settings.exactly_once:
        if settings.embedded:
            raise SettingError(
                "STREAMREC_PROCESSING_GUARANTEE=exactly_once needs Kafka transactions, which "
                "the embedded broker does not have: set STREAMREC_BROKER_URL or use "
                "at_least_once")
        log.warning("STREAMREC_PROCESSING_GUARANTEE=exactly_once is experimental: exact for a "
                    "killed worker and across rebalances, not yet after broker restarts under load "
                    "(docs/operations.md, 'Exactly-once processing')")
    broker = start_if_needed(settings)
    one_blas_thread()
    try:
        loop = _new_loop()
        loop.run_until_complete(prepare(settings))
        decl = build(settings)
        worker = faust_worker(decl.app, loop, settings, before_exit=lambda: (
            broker.stop(grace=2.0) if broker is not None else None))
        try:
            worker.execute_from_commandline()
        except SystemExit as done:
            if done.code in (0, None):   # Faust's worker ends so when it stopped cleanly
                stopped_cleanly(settings)
            raise
        finally:
            worker.deadline.disarm()    # stopped in time: what follows is ours to bound
    finally:
        if broker is not None:
            broker.stop()
        sys.stdout.flush()
