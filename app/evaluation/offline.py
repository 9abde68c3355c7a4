"""An in-process stand-in for the replay, for tuning only: the split's stream folded through
the same pure functions a worker runs (state fold, co-visitation, popularity, recommender),
with no broker. Each user's list is computed right after their last streamed rating, as the
pipeline would publish it. Quality figures are never quoted from here, only from
`streamrec replay` + `streamrec eval`; this finds parameters worth replaying, fast."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import msgspec
import numpy as np

from app.contract.records import Event
from app.core.catalogue import VectorIndex, entry, item_text
from app.core.recommender import Catalogue, Recommender, Request
from app.core.serving import learn_sequence, user_view
from app.core.state import (
    Applied,
    EventContext,
    StateCodec,
    UserState,
    apply_batch,
    event_fold,
)
from app.data.movielens import Rating
from app.demo import rating_records
from app.encoder.runtime import Encoder
from app.evaluation.split import Split

_events = msgspec.json.Decoder(Event)


def catalogue_of(split: Split, encoder: Encoder) -> Catalogue:
    upserts = split.catalogue
    vectors = encoder.encode([item_text(u) for u in upserts], "passage")
    catalogue = Catalogue(encoder.dimension)
    for upsert, vector in zip(upserts, vectors, strict=True):
        catalogue.upsert(entry(upsert, np.asarray(vector, dtype=np.float32),
                               encoder.manifest.model_name))
    return catalogue


def folded(split: Split, index: VectorIndex, dimension: int
           ) -> Iterator[tuple[Rating, UserState, Applied[UserState, Event]]]:
    """The split's stream through the worker's state fold: each rating with its user's state
    before it and what folding its events gave."""
    fold = event_fold(EventContext(item_vector=index.vector, query_vectors={},
                                   dimension=dimension))
    states: dict[str, UserState] = {}
    empty = StateCodec(UserState).empty
    for rating in split.stream:
        before = states.get(rating.user_id, empty)
        events = [_events.decode(value) for _, value in rating_records(split.dataset, rating)]
        result = apply_batch(before, events, 128, fold)
        states[rating.user_id] = result.state
        yield rating, before, result


def simulate(split: Split, encoder: Encoder, make: Callable[[Catalogue], Recommender],
             catalogue: Catalogue, k: int = 50) -> dict[str, list[str]]:
    recommender = make(catalogue)
    last = {r.user_id: n for n, r in enumerate(split.stream)}
    lists: dict[str, list[str]] = {}
    request = Request(k=k)
    for n, (rating, before, result) in enumerate(folded(split, catalogue.index,
                                                        encoder.dimension)):
        learn_sequence(recommender, before, result.applied)
        if last[rating.user_id] == n:
            view = user_view(result.state, encoder.dimension, encoder.encode_query)
            items, _ = recommender.recommend(view, request, now=result.state.last_ts)
            lists[rating.user_id] = [i.item_id for i in items]
    return lists
