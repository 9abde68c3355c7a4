"""The behaviour model's input tokens."""

from __future__ import annotations

from app.core.sequence import GAP_BUCKETS, KINDS, Vocabulary, gap_bucket, tokens

MINUTE = 60_000


def test_gap_buckets_grow_by_doubling_and_are_bounded() -> None:
    assert gap_bucket(None) == 1
    assert gap_bucket(0) == gap_bucket(59_999) == 2
    assert gap_bucket(MINUTE) == 3
    assert gap_bucket(2 * MINUTE) == gap_bucket(3 * MINUTE) == 4
    assert gap_bucket(60 * MINUTE) == 3 + 5
    assert gap_bucket(10**15) == GAP_BUCKETS - 1


def test_histories_become_left_padded_aligned_arrays() -> None:
    view, buy = KINDS["view"], KINDS["purchase"]
    batch = tokens([[(5, view, 0), (7, buy, 30 * MINUTE)], [(1, view, 0), (2, view, 1),
                                                           (3, view, 2 * MINUTE)]], 2)
    assert batch.items.tolist() == [[5, 7], [2, 3]]
    assert batch.kinds.tolist() == [[view, buy], [view, view]]
    # the first row's first event has no predecessor; the second row's kept events do
    assert batch.gaps.tolist() == [[1, gap_bucket(30 * MINUTE)], [2, gap_bucket(2 * MINUTE - 1)]]
    short = tokens([[(9, view, 0)]], 3)
    assert short.items.tolist() == [[0, 0, 9]]
    assert short.gaps.tolist() == [[0, 0, 1]]


def test_the_vocabulary_reserves_zero_for_padding_and_unknown_items() -> None:
    vocabulary = Vocabulary(["a", "b"])
    assert (vocabulary.of("a"), vocabulary.of("b"), vocabulary.of("zz")) == (1, 2, 0)
    assert len(vocabulary) == 2


def test_a_stored_sequence_gives_the_tokens_training_gives_for_the_same_history() -> None:
    """The worker folds events into 6-byte records; at serving time they become exactly the
    tokens `tokens` builds from the same history in training (items the model does not know
    are 0, the oldest beyond the limit are dropped)."""
    from app.core.sequence import STORED, HashedVocabulary, append, stored_tokens

    ids = ["m1", "m2", "m3", "m4"]
    vocabulary = Vocabulary(ids)
    history = [("m2", "view", 0), ("m3", "purchase", 5 * MINUTE), ("m1", "view", 6 * MINUTE),
               ("zz", "add_to_cart", 9 * MINUTE), ("m4", "purchase", 10**10)]
    stored = b""
    previous: int | None = None
    for item, kind, ts in history:
        stored = append(stored, item, kind, None if previous is None else ts - previous,
                        limit=4)
        previous = ts
    assert len(stored) == 4 * STORED.itemsize
    served = stored_tokens([stored, b""], HashedVocabulary(ids), 6)
    trained = tokens([[(vocabulary.of(i), KINDS[k], ts) for i, k, ts in history]], 6)
    # the stored sequence holds the last 4 events; training read all 5
    assert served.items[0].tolist() == [0, 0, *trained.items[0, 2:].tolist()]
    assert served.kinds[0].tolist() == [0, 0, *trained.kinds[0, 2:].tolist()]
    assert served.gaps[0].tolist() == [0, 0, *trained.gaps[0, 2:].tolist()]
    assert served.items[0].tolist()[-2] == 0      # "zz": unknown to the model
    assert served.items[1].tolist() == [0] * 6


def test_the_fold_keeps_the_model_sequence_bounded() -> None:
    import numpy as np

    from app.contract.records import Purchase, View
    from app.core.sequence import SEQUENCE_LENGTH, stored_events
    from app.core.state import EventContext, UserState, apply_batch, event_fold

    context = EventContext(item_vector=lambda item: None, query_vectors={}, dimension=4)
    events: list[View | Purchase] = [
        View(v=1, event_id=f"e{i}", user_id="u", ts=i * MINUTE, item_id=f"i{i % 7}")
        for i in range(250)]
    events.append(Purchase(v=1, event_id="p", user_id="u", ts=300 * MINUTE, item_id="i1",
                           price=1.0))
    state = apply_batch(UserState(), events, 128, event_fold(context)).state
    stored = stored_events(state.sequence)
    assert len(stored) == SEQUENCE_LENGTH
    assert stored["kind"][-1] == KINDS["purchase"]
    assert stored["gap"][-1] == gap_bucket((300 - 249) * MINUTE)
    assert np.all(stored["gap"][:-1] == gap_bucket(MINUTE))


def test_events_on_the_item_the_sequence_ends_with_are_one_interaction() -> None:
    """A view then a purchase of the same item (how the replay sends a rating of 4 or more,
    how a shop sees a sale) is the one purchase event training reads for it."""
    from app.core.sequence import STORED, append, stored_events

    stored = append(b"", "m1", "view", None)
    stored = append(stored, "m2", "view", 3 * MINUTE)
    stored = append(stored, "m2", "purchase", 0)
    stored = append(stored, "m2", "view", MINUTE)      # never weakens the kind
    events = stored_events(stored)
    assert len(stored) == 2 * STORED.itemsize
    assert events["kind"].tolist() == [KINDS["view"], KINDS["purchase"]]
    assert events["gap"].tolist() == [1, int(tokens([[(1, 1, 0), (2, 1, 3 * MINUTE)]], 2
                                                     ).gaps[0, 1])]
    again = append(stored, "m1", "view", MINUTE)       # not the last item: a new event
    assert len(again) == 3 * STORED.itemsize
