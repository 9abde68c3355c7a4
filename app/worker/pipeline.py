"""The worker's recommendation pipeline: the glue between Faust's batches and the pure core.

- items: each worker embeds the items of its own partitions (once per change) and publishes
  them, cleaned and with their vectors, to the compacted `catalogue` topic;
- catalogue: every worker follows that whole topic (no consumer group, from the beginning)
  into its in-memory index, so each one can rank against the full catalogue and recovers it
  by re-reading the topic after a restart;
- events: a batch's search queries are embedded, each user's events folded into their state,
  then one recommendation per user and batch is published (bursts coalesce per batch).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec
import numpy as np

from app.broker.reading import follow, follow_records
from app.contract.partitioning import item_partition
from app.contract.records import (
    Event,
    ItemOp,
    RecommendedItem,
    Search,
    UserProfile,
)
from app.core.catalogue import entry, item_text
from app.core.covisit import CoVisitation
from app.core.exploration import Exploration
from app.core.itemstats import Evidence, Follower
from app.core.itemstats import encode as encode_item_stats
from app.core.profile import segments_of
from app.core.ranking import RankerParams
from app.core.recommender import (
    Catalogue,
    Recommender,
    Request,
    Searched,
    UserView,
    with_sources,
)
from app.core.served import ServedLists
from app.core.serving import (
    apply_catalogue_record,
    behaviour_example,
    learn_segment_history,
    next_items,
    now_ms,
    projection_pair,
    rebuild_memory,
    recommend_after,
    sampled,
    shown_list,
    user_view,
)
from app.core.state import (
    EventContext,
    ItemState,
    ProfileState,
    Shown,
    StateCodec,
    UserState,
    event_fold,
)
from app.core.weighing import ScaleChooser
from app.encoder.behaviour import RANKER_FILE, SequenceModel
from app.encoder.runtime import Encoder, FloatArray
from app.metrics import Metrics
from app.settings import Settings
from app.worker.behaviour import BehaviourModels
from app.worker.faust_compat import EvidenceSends
from app.worker.feedback import LEARNING, FeedbackLoop
from app.worker.results import KeyResult, count_failure

log = logging.getLogger(__name__)

_entry_encoder = msgspec.msgpack.Encoder()
_rec_encoder = msgspec.json.Encoder()


def settle_garbage_collector() -> None:
    """Move everything alive after start-up (modules, the catalogue, the encoder) out of
    the garbage collector's reach: a full collection then walks only what came later (one
    over a fresh worker's objects takes ~18 ms here; `streamrec_gc_pause_seconds` shows
    what collections cost afterwards)."""
    gc.collect()
    gc.freeze()


def make_recommender(settings: Settings, dimension: int,
                     sequence_model: SequenceModel | None = None,
                     catalogue: Catalogue | None = None) -> Recommender:
    """A worker's recommender, with the candidate sources its settings switch on (and the
    behaviour model's item side, when one is served); an empty catalogue unless given."""
    sources = frozenset(settings.candidate_sources.split(","))
    return Recommender(catalogue if catalogue is not None
                       else Catalogue(dimension, settings.ann_threshold),
                       sources=sources,
                       covisit=CoVisitation(max_neighbours=settings.covisit_edges),
                       params=with_sources(RankerParams(), sources),
                       behaviour=sequence_model.space if sequence_model else None)


def load_sequence_model(settings: Settings) -> SequenceModel | None:
    """The behaviour model the settings name, or None."""
    if settings.behaviour_model is None:
        return None
    model = SequenceModel.load(settings.behaviour_model)
    log.info("behaviour model %s loaded: %d items, %d events read per user",
             model.version, len(model.space.vocabulary), model.length)
    return model


class Pipeline:
    def __init__(self, settings: Settings, metrics: Metrics, encoder: Encoder,
                 recommender: Recommender, recommendations: Any, catalogue_topic: Any,
                 feedback: FeedbackLoop,
                 profiles: Callable[[bytes], UserProfile | None] = lambda key: None,
                 users: Callable[[bytes], UserState] = lambda key: UserState(),
                 remember: Callable[[KeyResult[UserState, Event], Shown], None]
                 = lambda result, shown: None,
                 sequence_model: SequenceModel | None = None,
                 evidence_topic: EvidenceSends | None = None) -> None:
        """``remember`` keeps a published list for attribution (the feedback table);
        ``evidence_topic``: where each batch's item evidence goes (global item statistics;
        None: each worker counts its own events)."""
        self.settings = settings
        self.metrics = metrics
        self.encoder = encoder
        self.recommender = recommender
        self.feedback = feedback
        self._recommendations = recommendations
        self._catalogue_topic = catalogue_topic
        self._profiles = profiles
        self._users = users
        self._remember = remember
        self.sequence_model: SequenceModel | None = None
        # an untuned model starts as a candidate source only, unless it is the only one
        alone = settings.candidate_sources.split(",") == ["sequence"]
        self.scales = ScaleChooser(k=min(10, settings.recommendation_size),
                                   current=1.0 if alone else 0.0)
        self.behaviour_models = BehaviourModels(
            settings.data_dir / "behaviour-models", metrics, self.use_behaviour,
            served=sequence_model.version if sequence_model is not None else "")
        self.use_behaviour(sequence_model)
        self._exploration = Exploration(epsilon=settings.exploration_epsilon)
        self.pseudonymous = bool(settings.pseudonym_key.get_secret_value())
        self.served = ServedLists(settings.pull_cache_users,
                                  settings.pull_cache_seconds * 1000)
        self._stale: dict[bytes, Request] = {}   # users whose expired list is scored again
        self._refresher: asyncio.Task[None] | None = None
        self.catalogue_synced = asyncio.Event()
        self._evidence_topic = evidence_topic
        self.item_stats_synced = asyncio.Event()
        if evidence_topic is None:
            self.item_stats_synced.set()
        self._latest_event_ts = 0
        self._fold: Callable[[UserState, Event], UserState] = event_fold(EventContext(
            item_vector=recommender.catalogue.index.vector, query_vectors={},
            dimension=encoder.dimension))   # the last batch's (prepare_events)

    async def _embed(self, texts: list[str], purpose: str, kind: str = "passage"
                     ) -> FloatArray:
        started = time.perf_counter()
        if kind == "query":
            vectors = await asyncio.to_thread(
                lambda: np.stack([self.encoder.encode_query(t) for t in texts]))
        else:
            vectors = await asyncio.to_thread(self.encoder.encode, texts, "passage")
        self.metrics.encoder_seconds.labels(purpose).observe(time.perf_counter() - started)
        return vectors

    # --- events ---------------------------------------------------------------------------

    async def prepare_events(self, records: list[Event]) -> Callable[[UserState, Event],
                                                                     UserState]:
        queries = {r.query for r in records if isinstance(r, Search)}
        known = {q: v for q in queries if (v := self.encoder.cached_query(q)) is not None}
        new = sorted(queries - known.keys())   # only these need the model (in a thread)
        vectors = list(await self._embed(new, "queries", "query")) if new else []
        context = EventContext(
            item_vector=self.recommender.catalogue.index.vector,
            query_vectors={**known, **dict(zip(new, vectors, strict=True))},
            dimension=self.encoder.dimension,
        )
        self._fold = event_fold(context)
        return self._fold

    async def after_events(self, results: list[KeyResult[UserState, Event]]) -> None:
        request = Request(k=self.settings.recommendation_size)
        learn = self.settings.behaviour_sample > 0 and self.feedback.learns()
        features: list[tuple[float, ...]] = []
        rewards: list[float] = []
        pairs: list[tuple[bytes, str]] = []
        vectors = await self._behaviour([r.state for r in results])
        self._score_scales(results)
        evidences: dict[int | None, Evidence] = {}
        views: list[UserView | None]
        searched: list[Searched | None]
        try:   # every user's view and encoder search first: one matrix product for all
            made = [user_view(r.state, self.encoder.dimension, self.encoder.encode_query,
                              self.segments(r.key), vector)
                    for r, vector in zip(results, vectors, strict=True)]
            views = list(made)
            searched = self.recommender.search_many(made, [
                self.feedback.params_for(self.feedback.variant(r.applied[-1].user_id))
                for r in results])
        except Exception as exc:  # noqa: BLE001 - each list then makes its own
            count_failure(self.metrics, "recommendations", exc)
            views, searched = [None] * len(results), [None] * len(results)
        for result, vector, view, search in zip(results, vectors, views, searched,
                                                strict=True):
            if learn:   # before the user's events feed co-visitation
                try:
                    self._learn_from(result, request, features, rewards, pairs)
                except Exception as exc:  # noqa: BLE001 - learning must not cost the list
                    count_failure(self.metrics, "behaviour", exc)
            try:
                await self._recommend(result, request, vector, self._evidence_of(
                    evidences, result.last_event.message.partition), view, search)
            except Exception as exc:  # noqa: BLE001 - state is saved; count and go on
                count_failure(self.metrics, "recommendations", exc)
        stamps = [r.last_event.message.timestamp for r in results]
        for source, evidence in evidences.items():
            if evidence:
                await self._send_evidence(evidence, stamps, source)
        await self.feedback.flush_shown()
        await self.feedback.send_behaviour(
            features, rewards, [q for q, _ in pairs], [t for _, t in pairs],
            int(max(stamps) * 1000) if stamps and all(stamps) else now_ms())

    def _score_scales(self, results: list[KeyResult[UserState, Event]]) -> None:
        """Score the lists remembered at every scale by the users' next items, and serve
        the scale the evidence favours (app.core.weighing)."""
        chooser = self.scales
        if self.sequence_model is None or not self.settings.behaviour_scale_sample:
            return
        for result in results:
            user = result.key.decode()
            if not chooser.waiting(user):
                continue
            for event in result.applied:
                if not isinstance(event, Search) and chooser.observe(user, event.item_id):
                    self.metrics.behaviour_scale_samples.inc()
                    break
        chosen = chooser.decide()
        if chosen is not None:
            self.sequence_model.space.scale = chosen
            self.metrics.behaviour_scale.set(chosen)
            log.info("behaviour model %s: scale %g from %d users' next items (%s)",
                     chooser.version, chosen, chooser.samples,
                     chooser.summary()["ndcg@k_by_scale"])

    def scale_evidence(self) -> dict[str, Any] | None:
        """What the served scale rests on (None when it is not chosen online)."""
        if self.sequence_model is None or not self.settings.behaviour_scale_sample:
            return None
        return self.scales.summary()

    def _evidence_of(self, evidences: dict[int | None, Evidence], partition: int
                     ) -> Evidence | None:
        """Where a user's events in this batch add their item evidence (None: local item
        statistics); one sum per batch, or per input partition under exactly-once (each
        goes in that partition's transaction)."""
        if self._evidence_topic is None:
            return None
        source = partition if self._evidence_topic.per_input_partition else None
        found = evidences.get(source)
        if found is None:
            found = evidences[source] = Evidence(self.recommender.covisit,
                                                 self.recommender.popularity.half_life_ms)
        return found

    async def _send_evidence(self, evidence: Evidence, stamps: Sequence[float | None],
                             source: int | None) -> None:
        """A batch's item evidence, one record per item partition, to the evidence topic;
        stamped with the oldest of the batch's users' last events' Kafka timestamps (the
        freshness of the global statistics is measured from it)."""
        sends = self._evidence_topic
        assert sends is not None   # (evidence is summed only with a topic to send it to)
        known = [stamp for stamp in stamps if stamp]
        produced = round(min(known) * 1000) if known else now_ms()
        for number, record in evidence.split(self.settings.partitions, item_partition,
                                             produced).items():
            value = encode_item_stats(record)
            await sends.send(value, number, source)
            self.metrics.written_bytes.labels("evidence").inc(len(value))

    def _learn_from(self, result: KeyResult[UserState, Event], request: Request,
                    features: list[tuple[float, ...]], rewards: list[float],
                    pairs: list[tuple[bytes, str]]) -> None:
        """What the user's sampled next items in this batch teach (behaviour_example,
        projection_pair), added to the batch's."""
        segments = self.segments(result.key)
        projection = self.feedback.learns_projection()
        for before, event in next_items(result.before, result.applied,
                                        self.settings.behaviour_sample, self._fold):
            view = user_view(before, self.encoder.dimension, self.encoder.encode_query,
                             segments)
            if projection and (pair := projection_pair(view, event)) is not None:
                pairs.append(pair)
            # asked when the user came back for the item: a user away for a while is ranked
            # as away, so the learner sees the trending feature where it matters
            example = behaviour_example(self.recommender, view, event.ts, event,
                                        request, self.settings.behaviour_negatives)
            if example is None:
                self.metrics.behaviour.labels("not_a_candidate").inc()
                continue
            self.metrics.behaviour.labels("learnt").inc()
            x, y = example
            features.extend(tuple(row) for row in x.tolist())
            rewards.extend(y.tolist())

    async def after_profiles(self, results: list[KeyResult[ProfileState, UserProfile]]
                             ) -> None:
        """A profile that puts a user in new segments counts their history so far for those
        segments: the same counts a regrowth of memory would give. The user's cached list
        is dropped: a new user's answer depends on their segments."""
        evidences: dict[int | None, Evidence] = {}
        for result in results:
            self.served.forget(result.key)
            added = (set(segments_of(result.state.profile))
                     - set(segments_of(result.before.profile)))
            if added:
                learn_segment_history(self.recommender, self._users(result.key),
                                      sorted(added), self._evidence_of(
                                          evidences, result.last_event.message.partition))
        stamps = [r.last_event.message.timestamp for r in results]
        for source, evidence in evidences.items():
            if evidence:
                await self._send_evidence(evidence, stamps, source)

    async def after_forget(self, keys: list[bytes]) -> None:
        """Forgotten users (their tables already cleared): their cached lists are dropped
        and a tombstone keyed by each goes to the recommendations topic, telling its
        consumers to drop the lists they hold for that user."""
        for key in keys:
            self.served.forget(key)
            self._stale.pop(key, None)
            await self._recommendations.send(key=key, value=None)

    def segments(self, key: bytes) -> tuple[str, ...]:
        """The profile segments of the user stored under ``key`` (none when unknown)."""
        return segments_of(self._profiles(key))

    def recommend_now(self, state: UserState, request: Request, key: bytes = b"",
                      fresh: bool = False, at: int | None = None
                      ) -> tuple[list[RecommendedItem], str]:
        """Recommendations for a stored user state (the pull API), and the version of the
        ranker that made them (the user's A/B variant's); a new user gets the cold-start
        answer (popular items, with their profile segments' when known). The list is for
        the event time ``at``, by default the worker's clock (the newest event time it has
        read; the user's last event while it has read none): a user whose last event is
        older is away (app.core.recommender). The list last computed for the user answers
        when nothing it depends on has changed (app.core.served), unless ``fresh`` or
        ``at`` is given."""
        params = self.feedback.params_for(self.feedback.variant(key.decode()))
        version = params.version
        clock = time.monotonic() * 1000
        if not fresh and at is None and state.last_ts:
            # (a TTL of 0 asks for every pull scored: no older list answers then)
            cached = self.served.get(key, state.last_ts, version, request, clock,
                                     stale=self.served.ttl_ms > 0)
            if cached is not None:
                expired = self.served.expired(key, clock)
                self.metrics.pull_cache.labels("stale" if expired else "hit").inc()
                if expired:
                    self._refresh_later(key, request)
                return cached, version
            self.metrics.pull_cache.labels("miss").inc()
        behaviour = None
        if self.sequence_model is not None and "sequence" in self.recommender.sources:
            started = time.perf_counter()
            behaviour = self.sequence_model.user_vectors([state.sequence])[0]
            self.metrics.encoder_seconds.labels("behaviour").observe(
                time.perf_counter() - started)
            self.metrics.behaviour_vectors.inc()
        view = user_view(state, self.encoder.dimension, self.encoder.encode_query,
                         self.segments(key), behaviour)
        now = at if at is not None else max(self._latest_event_ts, state.last_ts)
        items, _ = self.recommender.recommend(view, request, now=now, params=params)
        if state.last_ts and at is None:
            self.served.put(key, state.last_ts, version, request, items, clock)
        return items, version

    def _refresh_later(self, key: bytes, request: Request) -> None:
        """Score a user whose cached list expired again once the request that found it is
        answered (it got the expired list: stale-while-revalidate), a user at a time, the
        event loop left free after each for as long as the scoring took: a pull waits for
        at most one user's scoring, and a burst of expired users is not a burst of stalls."""
        if key in self._stale:
            return
        self._stale[key] = request
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_stale())

    async def _refresh_stale(self) -> None:
        took = 0.0
        while self._stale:
            await asyncio.sleep(took)   # the requests waiting go first
            key, request = next(iter(self._stale.items()))
            started = time.perf_counter()
            try:
                self.recommend_now(self._users(key), request, key, fresh=True)
            except Exception as exc:  # noqa: BLE001 - the next pull scores afresh
                count_failure(self.metrics, "recommendations", exc)
            finally:
                self._stale.pop(key, None)
            took = time.perf_counter() - started

    async def _behaviour(self, states: Sequence[UserState]) -> list[FloatArray | None]:
        """The behaviour model's user vectors for ``states``, in one onnxruntime call off the
        event loop (onnxruntime releases the GIL); all None without a model."""
        model = self.sequence_model
        if model is None or not states or "sequence" not in self.recommender.sources:
            return [None] * len(states)
        started = time.perf_counter()
        vectors = await asyncio.to_thread(model.user_vectors, [s.sequence for s in states])
        self.metrics.encoder_seconds.labels("behaviour").observe(time.perf_counter() - started)
        self.metrics.behaviour_vectors.inc(len(states))
        if self.sequence_model is not model:   # swapped meanwhile: another model's space
            return [None] * len(states)
        return vectors

    async def _recommend(self, result: KeyResult[UserState, Event], request: Request,
                         behaviour: FloatArray | None = None,
                         evidence: Evidence | None = None, view: UserView | None = None,
                         searched: Searched | None = None) -> None:
        self._latest_event_ts = max(self._latest_event_ts, result.state.last_ts)
        variant = self.feedback.variant(result.applied[-1].user_id)
        params = self.feedback.params_for(variant)
        weigh = behaviour is not None and self.settings.behaviour_scale_sample > 0 \
            and bool(result.state.recent) \
            and sampled(result.applied[-1].event_id, self.settings.behaviour_scale_sample)
        record, ranking = recommend_after(
            self.recommender, self.encoder, result.before, result.state, result.applied,
            request,
            self.segments(result.key), params,
            self._exploration if variant == LEARNING else None, behaviour, evidence, view,
            searched, self.scales.scales if weigh else (), self.scales.k)
        if ranking.alternatives:
            self.scales.remember(result.key.decode(), result.state.recent[-1][0],
                                 ranking.alternatives)
        if self.pseudonymous:   # the list is keyed and addressed by the pseudonym alone
            record = msgspec.structs.replace(record, user_id=result.key.decode())
        for source, count in ranking.counts.items():
            self.metrics.candidates.labels(source).inc(count)
        self.served.put(result.key, result.state.last_ts, record.model_version, request,
                        list(record.items), time.monotonic() * 1000)
        value = _rec_encoder.encode(record)
        await self._recommendations.send(key=result.key, value=value)
        self.metrics.written_bytes.labels("recommendations").inc(len(result.key) + len(value))
        self.metrics.recommendations.inc()
        shown = shown_list(record, ranking, variant, self.settings.shown_items)
        self._remember(result, shown)
        self.feedback.count_shown(variant, record.model_version, len(shown.items))
        sent_at = result.last_event.message.timestamp
        if sent_at:
            self.metrics.latency.observe(max(0.0, record.produced_at / 1000 - float(sent_at)))

    # --- items and the catalogue ----------------------------------------------------------

    async def after_items(self, results: list[KeyResult[ItemState, ItemOp]]) -> None:
        upserts = [(r.key, r.state.item) for r in results if r.state.item is not None]
        if upserts:
            vectors = await self._embed([item_text(item) for _, item in upserts], "items")
            for (key, item), vector in zip(upserts, vectors, strict=True):
                published = entry(item, vector, self.encoder.manifest.model_name)
                value = _entry_encoder.encode(published)
                await self._catalogue_topic.send(key=key, value=value)
                self.metrics.written_bytes.labels("catalogue").inc(len(key) + len(value))
        for result in results:
            if result.state.item is None:
                await self._catalogue_topic.send(key=result.key, value=None)

    def apply_catalogue(self, key: bytes | None, value: bytes | None) -> None:
        apply_catalogue_record(self.recommender.catalogue, key, value)
        self.metrics.catalogue_items.set(len(self.recommender.catalogue.index))

    async def keep_memory(self, app: Any, table: Any,
                          seen: Callable[[bytes, UserState], None] | None = None) -> None:
        """After every (re)assignment, once the tables are recovered, regrow the in-memory
        co-visitation graph and popularity from the users this worker now holds; ``seen``
        is shown every stored state on the way (the forgotten users' markers)."""
        codec = StateCodec(UserState)

        def states() -> Iterator[tuple[UserState, tuple[str, ...]]]:
            for key, value in table.items():
                state = codec.decode(value)
                if seen is not None:
                    seen(key, state)
                # the clock a pull is answered at: the newest event any stored user had
                self._latest_event_ts = max(self._latest_event_ts, state.last_ts)
                yield state, self.segments(key)

        built_for: frozenset[Any] | None = None
        previous: frozenset[Any] | None = None
        while True:
            await asyncio.sleep(1.0)
            assignment = frozenset(app.consumer.assignment())
            stable, previous = assignment == previous, assignment
            if (assignment == built_for or not stable or app.rebalancing
                    or not app.tables.recovery.completed.is_set()):
                continue
            local = self._evidence_topic is None
            users = rebuild_memory(self.recommender, states(), items=local)
            built_for = assignment
            log.info("%s regrown from %d stored users",
                     "co-visitation and popularity" if local else "trending (the graph, "
                     "overall and segment popularity are the global ones)", users)

    async def follow_catalogue(self) -> None:
        """Read the whole catalogue topic, then keep following it."""
        def loaded() -> None:
            log.info("catalogue loaded: %d items", len(self.recommender.catalogue.index))
            settle_garbage_collector()

        await follow(self.settings, self.settings.topic_catalogue, self.apply_catalogue,
                     self.catalogue_synced, loaded, failed=self._follow_failed("catalogue"))

    async def follow_item_stats(self, snapshot: str, evidence: str) -> None:
        """Keep this worker's copy of the global item statistics: load the snapshot (every
        entry and marker of the item-stats table's changelog ``snapshot``), then merge the
        ``evidence`` topic's records after each partition's marker, and go on merging them
        as they come (app.core.itemstats.Follower). Synced once the evidence the topic held
        after the snapshot is merged."""
        recommender = self.recommender
        follower = Follower.over(recommender.covisit, recommender.popularity,
                                 recommender.segment_popularity)
        failed = self._follow_failed("item-stats")
        loaded = asyncio.Event()
        await follow_records(self.settings, snapshot, lambda message: follower.load(
            message.key, message.value, message.partition), loaded, keep_following=False,
            failed=failed)
        log.info("global item statistics: snapshot loaded, %d items with neighbours; "
                 "merging the evidence after it", len(self.recommender.covisit.out))
        freshness = self.metrics.item_stats_freshness
        synced = self.item_stats_synced

        def merge(message: Any) -> None:
            record = follower.merge(message.value, message.offset)
            if record.produced and synced.is_set():
                freshness.observe(max(0.0, (now_ms() - record.produced) / 1000))

        def caught_up() -> None:
            log.info("global item statistics loaded: %d items with neighbours",
                     len(self.recommender.covisit.out))

        await follow_records(self.settings, evidence, merge, synced, caught_up,
                             failed=failed, start=follower.start)

    async def follow_models(self) -> None:
        """Read the whole models topic, then keep following it: the ranker's versions and
        the behaviour models."""
        def apply(key: bytes | None, value: bytes | None) -> None:
            self.feedback.apply_model(key, value)
            self.behaviour_models.apply(key, value)

        await follow(self.settings, self.settings.topic_models, apply,
                     self.feedback.synced, failed=self._follow_failed("models"))

    def use_behaviour(self, model: SequenceModel | None) -> None:
        """Serve ``model`` (None: none) from the next batch on; a batch whose user vectors
        came from the model before is ranked without them (``_behaviour``)."""
        before = self.sequence_model
        self.sequence_model = model
        self.recommender.behaviour = model.space if model is not None else None
        if self.settings.behaviour_scale_sample > 0:
            tuned = model is not None and RANKER_FILE in model.manifest.get("files", ())
            scale = self.scales.serve(None if model is None else model.version,
                                      model.space.scale if model is not None and tuned
                                      else None)
            if model is not None:
                model.space.scale = scale
        self.metrics.behaviour_scale.set(model.space.scale if model is not None else 0.0)
        if before is not None:
            self.metrics.behaviour_model_info.remove(before.version)
        if model is not None:
            self.metrics.behaviour_model_info.labels(model.version).set(1)

    def _follow_failed(self, stage: str) -> Callable[[str, BaseException], None]:
        def failed(topic: str, exc: BaseException) -> None:
            count_failure(self.metrics, stage, exc)
        return failed
