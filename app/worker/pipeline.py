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
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from app.broker.reading import follow
from app.contract.records import (
    Event,
    ItemOp,
    Recommendation,
    RecommendedItem,
    Search,
    UserProfile,
)
from app.core.catalogue import CatalogueEntry, entry, item_text
from app.core.covisit import CoVisitation
from app.core.exploration import Exploration, explored
from app.core.learning import preferences
from app.core.profile import DAY_MS, SEQUENCE_WEIGHTS, decay, segments_of
from app.core.ranking import RankerParams
from app.core.recommender import (
    Catalogue,
    Popularity,
    Ranking,
    Recommender,
    Request,
    UserView,
    with_sources,
)
from app.core.served import ServedLists
from app.core.state import (
    EventContext,
    ItemState,
    ProfileState,
    Shown,
    ShownItem,
    StateCodec,
    UserState,
    event_fold,
    interest_of,
)
from app.encoder.behaviour import SequenceModel
from app.encoder.runtime import Encoder, FloatArray
from app.metrics import Metrics
from app.settings import Settings
from app.worker.agents import KeyResult, count_failure, now_ms
from app.worker.feedback import LEARNING, FeedbackLoop

log = logging.getLogger(__name__)

RECENCY_STEP = 0.5  # each older recent item weighs this much of the next newer one
QUERY_MEMORY_MS = DAY_MS  # a search keeps steering explanations for a day of event time
_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(CatalogueEntry)
_rec_encoder = msgspec.json.Encoder()


def settle_garbage_collector() -> None:
    """Move everything alive after start-up (modules, the catalogue, the encoder) out of
    the garbage collector's reach: a full collection then walks only what came later (one
    over a fresh worker's objects takes ~18 ms here; `streamrec_gc_pause_seconds` shows
    what collections cost afterwards)."""
    gc.collect()
    gc.freeze()


def user_view(state: UserState, dimension: int, embed_query: Callable[[str], FloatArray],
              segments: tuple[str, ...] = (), behaviour: FloatArray | None = None
              ) -> UserView:
    """The recommender's view of a user's stored state, weights decayed to their last event.
    The last search is embedded only while it still counts (a day of event time)."""
    now = state.last_ts
    last = len(state.recent) - 1
    recent = [(item, kind, SEQUENCE_WEIGHTS.get(kind, 1.0) * decay(now - ts, 14 * DAY_MS)
               * RECENCY_STEP ** (last - position))
              for position, (item, kind, ts) in enumerate(state.recent)]
    query = None
    if state.query and now - state.query_ts <= QUERY_MEMORY_MS:
        query = (state.query, embed_query(state.query))
    return UserView(interest_of(state, dimension).unit(), recent, set(state.purchased), query,
                    segments, state.consumed, behaviour)


def learn_sequence(recommender: Recommender, before: UserState, applied: Sequence[Event],
                   segments: Sequence[str] = ()) -> None:
    """Feed co-visitation and popularity (overall, and per profile segment of the user)
    with a user's newly applied item events, ``before`` being their state before them. Each
    item follows what came before it: the recent items before the batch, then the batch's
    earlier items (never a later item of the same batch, however many it held: a backlog
    batch can hold more than the state keeps). Another event on the item just touched (a
    view, then its purchase) is one visit, not two: the sequence did not move, and a memory
    regrown from stored users counts it once too."""
    order = [item for item, _, _ in before.recent]
    previous: str | None = None
    for event in applied:
        if isinstance(event, Search):
            continue
        if event.item_id == previous:
            continue
        previous = event.item_id
        kind = str(type(event).__struct_config__.tag)
        weight = SEQUENCE_WEIGHTS[kind]
        recommender.covisit.observe(order, event.item_id, weight)
        if event.item_id in order:
            order.remove(event.item_id)
        order.append(event.item_id)
        recommender.popularity.add(event.item_id, weight, event.ts)
        recommender.learn_segments(segments, event.item_id, weight, event.ts)


def recommend_after(recommender: Recommender, encoder: Encoder, before: UserState,
                    state: UserState, applied: Sequence[Event], request: Request,
                    segments: tuple[str, ...] = (), params: RankerParams | None = None,
                    exploration: Exploration | None = None,
                    behaviour: FloatArray | None = None
                    ) -> tuple[Recommendation, Ranking]:
    """The recommendation that follows a user's newly applied events, ``state`` after them
    and ``before`` before them (co-visitation and popularity learn from them first), scored
    with ``params`` (the recommender's own when None) and, when ``exploration`` is on, one
    slot explored; with its ranking (candidates per source, each item's features).
    ``behaviour`` is the behaviour model's user vector for ``state``, when one is served."""
    learn_sequence(recommender, before, applied, segments)
    view = user_view(state, encoder.dimension, encoder.encode_query, segments, behaviour)
    rec_id = uuid.uuid4().hex
    params = params or recommender.params
    if exploration is not None and exploration.epsilon > 0:
        ranking = explored(recommender.rank(view, request, state.last_ts, params,
                                            extra=exploration.pool),
                           request.k, exploration, rec_id)
    else:
        ranking = recommender.rank(view, request, state.last_ts, params)
    last = applied[-1]
    record = Recommendation(
        v=1, rec_id=rec_id, user_id=last.user_id, items=ranking.items,
        model_version=params.version, source_event_id=last.event_id,
        source_event_time=last.ts, produced_at=now_ms(), tenant=last.tenant,
    )
    return record, ranking


def sampled(event_id: str, share: float) -> bool:
    """Whether an event falls in a ``share`` of events (by a hash of its id: the same
    events are chosen on every replay and every worker)."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


def behaviour_example(recommender: Recommender, view: UserView, now: int, event: Event,
                      request: Request, negatives: int
                      ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """What a user's next item teaches the ranker: ``event``'s item against the candidates
    the user had just before it (``view``: their state then, last event at ``now``), as
    preferences over ``negatives`` of them. None when the item was not among those
    candidates."""
    assert not isinstance(event, Search)
    found = recommender.candidate_features(view, request, now, event.item_id)
    if found is None:
        return None
    features, row = found
    seed = int.from_bytes(hashlib.blake2b(event.event_id.encode(), digest_size=8).digest(),
                          "big")
    return preferences(features, row, negatives, seed)


def projection_pair(view: UserView, event: Event) -> tuple[bytes, str] | None:
    """What a user's next item teaches the projection W1: the user's interest just before
    it (float16) and the item; None for a user with no interest yet."""
    assert not isinstance(event, Search)
    if view.interest is None:
        return None
    return np.asarray(view.interest, dtype="<f2").tobytes(), event.item_id


def next_items(before: UserState, applied: Sequence[Event], share: float,
               fold: Callable[[UserState, Event], UserState]
               ) -> Iterator[tuple[UserState, Event]]:
    """The sampled item events of a user's batch, each with the user's state just before
    it (folded from the state before the batch), leaving out an event on the item just
    touched (a view, then its purchase: the sequence did not move)."""
    state = before
    last = max((n for n, e in enumerate(applied) if not isinstance(e, Search)
                and sampled(e.event_id, share)), default=-1)
    for event in applied[:last + 1]:
        if (not isinstance(event, Search) and state.recent
                and event.item_id != state.recent[-1][0] and sampled(event.event_id, share)):
            yield state, event
        state = fold(state, event)


def shown_list(record: Recommendation, ranking: Ranking, variant: str, size: int) -> Shown:
    """What attribution remembers of a published list: its top ``size`` items with their
    features, stamped with the event time of the event behind it (feedback is timed in
    event time too)."""
    return Shown(rec_id=record.rec_id, model_version=record.model_version, variant=variant,
                 produced_at=record.source_event_time,
                 items=tuple(ShownItem(item.item_id, position, features)
                             for position, (item, features) in enumerate(
                                 zip(record.items[:size], ranking.features, strict=False))))


def rebuild_memory(recommender: Recommender,
                   users: Iterable[tuple[UserState, tuple[str, ...]]]) -> int:
    """Regrow co-visitation and popularity (overall and per segment) from stored users'
    recent items and profile segments (after a restart or a rebalance: they live only in
    memory). Returns the number of users read."""
    covisit = CoVisitation(window=recommender.covisit.window,
                           max_neighbours=recommender.covisit.max_neighbours,
                           backward=recommender.covisit.backward)
    popularity = Popularity(half_life_ms=recommender.popularity.half_life_ms)
    recommender.segment_popularity = {}
    count = 0
    for state, segments in users:
        count += 1
        order = [item for item, _, _ in state.recent]
        for position, (item, kind, ts) in enumerate(state.recent):
            weight = SEQUENCE_WEIGHTS.get(kind, 1.0)
            covisit.observe(order[:position], item, weight)
            popularity.add(item, weight, ts)
        learn_segment_history(recommender, state, segments)
    recommender.covisit, recommender.popularity = covisit, popularity
    return count


def learn_segment_history(recommender: Recommender, state: UserState,
                          segments: Sequence[str]) -> None:
    """Count a user's stored recent items for their profile segments (when a profile
    arrives after the history, and when memory is regrown: both give the same counts)."""
    for item, kind, ts in state.recent:
        recommender.learn_segments(segments, item, SEQUENCE_WEIGHTS.get(kind, 1.0), ts)


def make_recommender(settings: Settings, dimension: int,
                     sequence_model: SequenceModel | None = None) -> Recommender:
    """A worker's recommender, with the candidate sources its settings switch on (and the
    behaviour model's item side, when one is served)."""
    sources = frozenset(settings.candidate_sources.split(","))
    return Recommender(Catalogue(dimension, settings.ann_threshold), sources=sources,
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


def apply_catalogue_record(catalogue: Catalogue, key: bytes | None, value: bytes | None
                           ) -> None:
    """One record of the compacted catalogue topic: an entry upserts, a tombstone deletes;
    an entry embedded with another dimension (another model) is skipped. Raises on a
    record that is neither (the follower counts and skips it)."""
    if not value:
        if key:
            catalogue.delete(key.decode())   # strict: no catalogued item has another key
        return
    published = _entry_decoder.decode(value)
    if len(published.vector) == 4 * catalogue.dimension:
        catalogue.upsert(published)


class Pipeline:
    def __init__(self, settings: Settings, metrics: Metrics, encoder: Encoder,
                 recommender: Recommender, recommendations: Any, catalogue_topic: Any,
                 feedback: FeedbackLoop,
                 profiles: Callable[[bytes], UserProfile | None] = lambda key: None,
                 users: Callable[[bytes], UserState] = lambda key: UserState(),
                 remember: Callable[[KeyResult[UserState, Event], Shown], None]
                 = lambda result, shown: None,
                 sequence_model: SequenceModel | None = None) -> None:
        """``remember`` keeps a published list for attribution (the feedback table)."""
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
        self.sequence_model = sequence_model
        self._exploration = Exploration(epsilon=settings.exploration_epsilon)
        self.served = ServedLists(settings.pull_cache_users,
                                  settings.pull_cache_seconds * 1000)
        self.catalogue_synced = asyncio.Event()
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
        for result, vector in zip(results, vectors, strict=True):
            if learn:   # before the user's events feed co-visitation
                try:
                    self._learn_from(result, request, features, rewards, pairs)
                except Exception as exc:  # noqa: BLE001 - learning must not cost the list
                    count_failure(self.metrics, "behaviour", exc)
            try:
                await self._recommend(result, request, vector)
            except Exception as exc:  # noqa: BLE001 - state is saved; count and go on
                count_failure(self.metrics, "recommendations", exc)
        await self.feedback.flush_shown()
        stamps = [r.last_event.message.timestamp for r in results]
        await self.feedback.send_behaviour(
            features, rewards, [q for q, _ in pairs], [t for _, t in pairs],
            int(max(stamps) * 1000) if stamps and all(stamps) else now_ms())

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
            example = behaviour_example(self.recommender, view, before.last_ts, event,
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
        for result in results:
            self.served.forget(result.key)
            added = (set(segments_of(result.state.profile))
                     - set(segments_of(result.before.profile)))
            if added:
                learn_segment_history(self.recommender, self._users(result.key),
                                      sorted(added))

    async def after_forget(self, keys: list[bytes]) -> None:
        """Forgotten users (their tables already cleared): their cached lists are dropped
        and a tombstone keyed by each goes to the recommendations topic, telling its
        consumers to drop the lists they hold for that user."""
        for key in keys:
            self.served.forget(key)
            await self._recommendations.send(key=key, value=None)

    def segments(self, key: bytes) -> tuple[str, ...]:
        """The profile segments of the user stored under ``key`` (none when unknown)."""
        return segments_of(self._profiles(key))

    def recommend_now(self, state: UserState, request: Request, key: bytes = b"",
                      fresh: bool = False) -> tuple[list[RecommendedItem], str]:
        """Recommendations for a stored user state (the pull API), and the version of the
        ranker that made them (the user's A/B variant's); a new user gets the cold-start
        answer (popular items, with their profile segments' when known). The list last
        computed for the user answers when nothing it depends on has changed
        (app.core.served), unless ``fresh``."""
        params = self.feedback.params_for(self.feedback.variant(key.decode()))
        version = params.version
        clock = time.monotonic() * 1000
        if not fresh and state.last_ts:
            cached = self.served.get(key, state.last_ts, version, request, clock)
            self.metrics.pull_cache.labels("hit" if cached is not None else "miss").inc()
            if cached is not None:
                return cached, version
        behaviour = None
        if self.sequence_model is not None and "sequence" in self.recommender.sources:
            started = time.perf_counter()
            behaviour = self.sequence_model.user_vectors([state.sequence])[0]
            self.metrics.encoder_seconds.labels("behaviour").observe(
                time.perf_counter() - started)
            self.metrics.behaviour_vectors.inc()
        view = user_view(state, self.encoder.dimension, self.encoder.encode_query,
                         self.segments(key), behaviour)
        now = state.last_ts or self._latest_event_ts
        items, _ = self.recommender.recommend(view, request, now=now, params=params)
        if state.last_ts:
            self.served.put(key, state.last_ts, version, request, items, clock)
        return items, version

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
        return vectors

    async def _recommend(self, result: KeyResult[UserState, Event], request: Request,
                         behaviour: FloatArray | None = None) -> None:
        self._latest_event_ts = max(self._latest_event_ts, result.state.last_ts)
        variant = self.feedback.variant(result.applied[-1].user_id)
        params = self.feedback.params_for(variant)
        record, ranking = recommend_after(
            self.recommender, self.encoder, result.before, result.state, result.applied,
            request,
            self.segments(result.key), params,
            self._exploration if variant == LEARNING else None, behaviour)
        for source, count in ranking.counts.items():
            self.metrics.candidates.labels(source).inc(count)
        self.served.put(result.key, result.state.last_ts, record.model_version, request,
                        list(record.items), time.monotonic() * 1000)
        await self._recommendations.send(key=result.key, value=_rec_encoder.encode(record))
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
                await self._catalogue_topic.send(key=key, value=_entry_encoder.encode(published))
        for result in results:
            if result.state.item is None:
                await self._catalogue_topic.send(key=result.key, value=None)

    def apply_catalogue(self, key: bytes | None, value: bytes | None) -> None:
        apply_catalogue_record(self.recommender.catalogue, key, value)
        self.metrics.catalogue_items.set(len(self.recommender.catalogue.index))

    async def keep_memory(self, app: Any, table: Any) -> None:
        """After every (re)assignment, once the tables are recovered, regrow the in-memory
        co-visitation graph and popularity from the users this worker now holds."""
        codec = StateCodec(UserState)
        built_for: frozenset[Any] | None = None
        previous: frozenset[Any] | None = None
        while True:
            await asyncio.sleep(1.0)
            assignment = frozenset(app.consumer.assignment())
            stable, previous = assignment == previous, assignment
            if (assignment == built_for or not stable or app.rebalancing
                    or not app.tables.recovery.completed.is_set()):
                continue
            users = rebuild_memory(self.recommender,
                                   ((codec.decode(value), self.segments(key))
                                    for key, value in table.items()))
            built_for = assignment
            log.info("co-visitation and popularity regrown from %d stored users", users)

    async def follow_catalogue(self) -> None:
        """Read the whole catalogue topic, then keep following it."""
        def loaded() -> None:
            log.info("catalogue loaded: %d items", len(self.recommender.catalogue.index))
            settle_garbage_collector()

        await follow(self.settings, self.settings.topic_catalogue, self.apply_catalogue,
                     self.catalogue_synced, loaded, failed=self._follow_failed("catalogue"))

    async def follow_models(self) -> None:
        """Read the whole models topic, then keep following it."""
        await follow(self.settings, self.settings.topic_models, self.feedback.apply_model,
                     self.feedback.synced, failed=self._follow_failed("models"))

    def _follow_failed(self, stage: str) -> Callable[[str, BaseException], None]:
        def failed(topic: str, exc: BaseException) -> None:
            count_failure(self.metrics, stage, exc)
        return failed
