"""The pure steps of serving a user's batch, shared by the worker, the peer jobs and the
offline evaluation: the recommender's view of a stored user, what a batch of events teaches
co-visitation and popularity, the recommendation that follows it, what attribution keeps of
a published list, the examples the learners are fed, and the in-memory parts regrown from
stored users. No Kafka, no Faust: plain functions over states, events and the recommender."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from app.contract.records import Event, Recommendation, Search
from app.core import consumed
from app.core.attribution import new_rec_id, slot_of
from app.core.catalogue import CatalogueEntry
from app.core.covisit import CoVisitation
from app.core.exploration import Exploration, explored
from app.core.itemstats import Evidence
from app.core.learning import preferences
from app.core.profile import DAY_MS, SEQUENCE_WEIGHTS, decay
from app.core.ranking import RankerParams
from app.core.recommender import (
    Catalogue,
    Popularity,
    Ranking,
    Recommender,
    Request,
    Searched,
    UserView,
)
from app.core.state import Shown, ShownItem, UserState, fold_all, interest_of

FloatArray = npt.NDArray[np.float32]

RECENCY_STEP = 0.5  # each older recent item weighs this much of the next newer one
QUERY_MEMORY_MS = DAY_MS  # a search keeps steering explanations for a day of event time
_entry_decoder = msgspec.msgpack.Decoder(CatalogueEntry)


class QueryEncoder(Protocol):
    """What serving needs of the text encoder: its dimension and a query's vector."""

    @property
    def dimension(self) -> int: ...

    def encode_query(self, text: str) -> FloatArray: ...


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the contract's time unit)."""
    return int(time.time() * 1000)


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
    return UserView(interest_of(state, dimension).unit(), recent, purchases(state), query,
                    segments, state.consumed, behaviour, state.last_ts)


def purchases(state: UserState) -> frozenset[int]:
    """The hashes of every item the user purchased (ids from a state written before the
    hashes too)."""
    held = consumed.held(state.purchases) if state.purchases else frozenset()
    return held | {consumed.known_hash(i) for i in state.purchased} if state.purchased \
        else held


def learn_sequence(recommender: Recommender, before: UserState, applied: Sequence[Event],
                   segments: Sequence[str] = (), evidence: Evidence | None = None) -> None:
    """Feed co-visitation and popularity (overall, and per profile segment of the user)
    with a user's newly applied item events, ``before`` being their state before them.
    With ``evidence`` (global item statistics), the graph, overall and segment popularity
    are counted there instead: every worker, this one too, merges it from the evidence topic
    (about a second later; counted here as well, it would be counted twice). Each
    item follows what came before it: the recent items before the batch, then the batch's
    earlier items (never a later item of the same batch, however many it held: a backlog
    batch can hold more than the state keeps). Another event on the item just touched (a
    view, then its purchase) is one visit, not two: the sequence did not move, and a memory
    regrown from stored users counts it once too."""
    # (only the last ``window`` items of the order are read: it is kept that long, so a
    # long batch does not search and shift an ever longer list per event)
    window = recommender.covisit.window
    order = [item for item, _, _ in before.recent][-window:]
    previous: str | None = None
    for event in applied:
        if isinstance(event, Search):
            continue
        if event.item_id == previous:
            continue
        previous = event.item_id
        kind = str(type(event).__struct_config__.tag)
        weight = SEQUENCE_WEIGHTS[kind]
        if evidence is not None:
            evidence.observe(order, event.item_id, weight, event.ts)
        else:
            recommender.popularity.add(event.item_id, weight, event.ts)
            recommender.covisit.observe(order, event.item_id, weight)
        if event.item_id in order:
            order.remove(event.item_id)
        order.append(event.item_id)
        if len(order) > window:
            del order[0]
        recommender.trending.add(event.item_id, weight, event.ts)
        if evidence is not None:
            evidence.observe_segments(segments, event.item_id, weight, event.ts)
        else:
            recommender.learn_segments(segments, event.item_id, weight, event.ts)


def recommend_after(recommender: Recommender, encoder: QueryEncoder, before: UserState,
                    state: UserState, applied: Sequence[Event], request: Request,
                    segments: tuple[str, ...] = (), params: RankerParams | None = None,
                    exploration: Exploration | None = None,
                    behaviour: FloatArray | None = None, evidence: Evidence | None = None,
                    view: UserView | None = None, searched: Searched | None = None,
                    alternatives: Sequence[float] = (), alternatives_k: int = 10
                    ) -> tuple[Recommendation, Ranking]:
    """The recommendation that follows a user's newly applied events, ``state`` after them
    and ``before`` before them (co-visitation and popularity learn from them first), scored
    with ``params`` (the recommender's own when None) and, when ``exploration`` is on, one
    slot explored; with its ranking (candidates per source, each item's features).
    ``behaviour`` is the behaviour model's user vector for ``state``, when one is served;
    ``evidence``: where the batch's item evidence is summed (global item statistics).
    ``view``: ``state``'s user_view (with ``segments`` and ``behaviour``) and ``searched``
    its encoder search (``Recommender.search_many``), when made with the rest of a batch's
    (neither depends on what co-visitation and popularity learn here). ``alternatives``:
    the behaviour model's scales to rank the list's top ``alternatives_k`` at too
    (``Recommender.rank``)."""
    learn_sequence(recommender, before, applied, segments, evidence)
    if view is None:
        view = user_view(state, encoder.dimension, encoder.encode_query, segments, behaviour)
    rec_id = new_rec_id(slot_of(sum(state.counts.values())))
    params = params or recommender.params
    if exploration is not None and exploration.epsilon > 0:
        ranking = explored(recommender.rank(view, request, state.last_ts, params,
                                            extra=exploration.pool, searched=searched,
                                            alternatives=alternatives,
                                            alternatives_k=alternatives_k),
                           request.k, exploration, rec_id)
    else:
        ranking = recommender.rank(view, request, state.last_ts, params, searched=searched,
                                   alternatives=alternatives, alternatives_k=alternatives_k)
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
    the user had just before it (``view``: their state then), asked at ``now`` (the
    event's time: a user back after a while is away), as preferences over ``negatives``
    of them. None when the item was not among those
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
    touched (a view, then its purchase: the sequence did not move). The events between two
    sampled ones are folded in one call (``fold_all``), none after the last."""
    state = before
    folded = 0   # applied[:folded] are in ``state``
    for n, event in enumerate(applied):
        if isinstance(event, Search) or not sampled(event.event_id, share):
            continue
        state = fold_all(fold, state, applied[folded:n])
        folded = n
        if state.recent and event.item_id != state.recent[-1][0]:
            yield state, event


def shown_list(record: Recommendation, ranking: Ranking, variant: str, size: int) -> Shown:
    """What attribution remembers of a published list: its top ``size`` items with their
    features, stamped with the event time of the event behind it (feedback is timed in
    event time too)."""
    return Shown(rec_id=record.rec_id, model_version=record.model_version, variant=variant,
                 produced_at=record.source_event_time,
                 items=tuple(ShownItem.of(item.item_id, position, features)
                             for position, (item, features) in enumerate(
                                 zip(record.items[:size], ranking.features, strict=False))))


def rebuild_memory(recommender: Recommender,
                   users: Iterable[tuple[UserState, tuple[str, ...]]],
                   items: bool = True) -> int:
    """Regrow co-visitation and popularity (overall and per segment) from stored users'
    recent items and profile segments (after a restart or a rebalance: they live only in
    memory); without ``items``, trending only (the graph, the overall and the segment
    popularity are the global ones, followed). Returns the number of users read."""
    covisit = CoVisitation(window=recommender.covisit.window,
                           max_neighbours=recommender.covisit.max_neighbours,
                           backward=recommender.covisit.backward)
    popularity = Popularity(half_life_ms=recommender.popularity.half_life_ms)
    trending = recommender.trending.fresh()
    if items:
        recommender.segment_popularity = {}
    count = 0
    for state, segments in users:
        count += 1
        order = [item for item, _, _ in state.recent]
        for position, (item, kind, ts) in enumerate(state.recent):
            weight = SEQUENCE_WEIGHTS.get(kind, 1.0)
            if items:
                covisit.observe(order[:position], item, weight)
                popularity.add(item, weight, ts)
            trending.add(item, weight, ts)
        if items:
            learn_segment_history(recommender, state, segments)
    if items:
        recommender.covisit, recommender.popularity = covisit, popularity
    recommender.trending = trending
    return count


def learn_segment_history(recommender: Recommender, state: UserState,
                          segments: Sequence[str], evidence: Evidence | None = None) -> None:
    """Count a user's stored recent items for their profile segments (when a profile
    arrives after the history, and when memory is regrown: both give the same counts);
    into ``evidence`` instead with global item statistics."""
    for item, kind, ts in state.recent:
        weight = SEQUENCE_WEIGHTS.get(kind, 1.0)
        if evidence is not None:
            evidence.observe_segments(segments, item, weight, ts)
        else:
            recommender.learn_segments(segments, item, weight, ts)


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
        norm = float(np.linalg.norm(published.array().astype(np.float64)))
        if not 0.9 <= norm <= 1.1:   # NaN included: every ranking would read it
            raise ValueError(f"catalogue vector of norm {norm:.3g}, not a unit vector")
        catalogue.upsert(published)
