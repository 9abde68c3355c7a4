"""Feedback joined with what was shown: examples, conversions, unattributable counts."""

from __future__ import annotations

import msgspec
import numpy as np

from app.contract.records import Feedback, FeedbackType
from app.core.attribution import (
    MAX_SHOWN,
    attribute,
    decode_shown,
    encode_shown,
    new_rec_id,
    slot_in,
    slot_key,
    slot_keys,
    slot_of,
)
from app.core.state import FeedbackState, Shown, ShownItem, StateCodec

HOUR = 3_600_000


def shown(rec_id: str, at: int, items: list[str]) -> Shown:
    return Shown(rec_id=rec_id, model_version="default-2", variant="frozen", produced_at=at,
                 items=tuple(ShownItem(item, n, (float(n), 1.0, 0.0, 0.0, 1.0))
                             for n, item in enumerate(items)))


def feedback(kind: FeedbackType, rec_id: str, item: str, ts: int) -> Feedback:
    return Feedback(v=1, type=kind, event_id=f"{kind}-{item}-{ts}", user_id="u",
                    rec_id=rec_id, item_id=item, ts=ts)


def test_a_click_is_preferred_to_every_other_shown_item_in_pairs() -> None:
    listed = shown("r1", 0, ["a", "b", "c", "d"])
    state, outcome = attribute(FeedbackState(), feedback(FeedbackType.CLICK, "r1", "c", HOUR),
                               listed)
    assert outcome.unattributed is None
    # c (feature 2) against a (0), b (1) and d (3): each difference 1, its negation 0
    assert [(e.features[0], e.reward) for e in outcome.examples] == [
        (2.0, 1.0), (-2.0, 0.0), (1.0, 1.0), (-1.0, 0.0), (-1.0, 1.0), (1.0, 0.0)]
    assert all(e.features[1] == 0.0 for e in outcome.examples)   # equal features cancel
    assert not outcome.conversion
    assert state.counts == {"attributed:click": 1}
    state, first = attribute(state, feedback(FeedbackType.PURCHASE, "r1", "a", 2 * HOUR),
                             listed)
    assert len(first.examples) == 6
    assert {e.weight for e in first.examples} == {3.0}
    assert first.conversion
    late = attribute(state, feedback(FeedbackType.PURCHASE, "r1", "a", 23 * HOUR), listed,
                     conversion_window_ms=HOUR)[1]
    assert not late.conversion


def test_impressions_are_counted_and_teach_nothing() -> None:
    state, outcome = attribute(FeedbackState(), feedback(FeedbackType.IMPRESSION, "r1", "b", 1),
                               shown("r1", 0, ["a", "b"]))
    assert outcome.examples == ()
    assert outcome.unattributed is None
    assert state.counts == {"attributed:impression": 1}


def test_unattributable_feedback_is_counted_with_its_reason() -> None:
    state, listed = FeedbackState(), shown("r1", 0, ["a", "b"])
    for rec_id, item, ts, reason in [("nope", "a", 1, "unknown_rec"),
                                     ("r1", "z", 1, "item_not_shown"),
                                     ("r1", "a", 25 * HOUR, "expired")]:
        state, outcome = attribute(state, feedback(FeedbackType.CLICK, rec_id, item, ts),
                                   listed)
        assert outcome.unattributed == reason
        assert outcome.examples == ()
    assert state.counts == {"unattributed:unknown_rec": 1, "unattributed:item_not_shown": 1,
                            "unattributed:expired": 1}


def test_a_list_is_remembered_in_a_slot_its_rec_id_names_until_the_slot_comes_round() -> None:
    """The list made after a user's n-th event goes to slot n mod MAX_SHOWN, written once
    under its own key: it answers feedback until the user's MAX_SHOWN-th next list reuses
    the slot (then the feedback is unknown_rec, as a list evicted from the old bounded
    state was), and for at most a day."""
    table: dict[bytes, bytes] = {}
    made: list[Shown] = []
    for events in range(1, 3 * MAX_SHOWN):      # a list after each of the user's events
        slot = slot_of(events)
        listed = shown(new_rec_id(slot), events * 60_000, ["a", "b"])
        assert slot_in(listed.rec_id) == slot
        assert len(listed.rec_id) == 32
        table[slot_key(b"u", slot)] = encode_shown(listed)
        made.append(listed)
    assert len(table) == MAX_SHOWN                 # bounded: one key per slot
    state = FeedbackState()
    outcomes = []
    for listed in made:
        slot = slot_in(listed.rec_id)
        assert slot is not None
        remembered = decode_shown(table.get(slot_key(b"u", slot)))
        state, outcome = attribute(state, feedback(FeedbackType.CLICK, listed.rec_id, "a",
                                                   made[-1].produced_at), remembered)
        outcomes.append(outcome.unattributed)
    assert outcomes == ["unknown_rec"] * (len(made) - MAX_SHOWN) + [None] * MAX_SHOWN
    assert decode_shown(None) is None
    # a slot's key is never a user's key (0xff is never in UTF-8) and names the user
    assert all(key.startswith(b"u\xff") for key in slot_keys(b"u"))
    assert len(set(slot_keys(b"u"))) == MAX_SHOWN
    # rec_ids made before slots (uuid4 hex) or by others name no slot, or a wrong one
    assert slot_in("r1") is None
    assert slot_in("0" * 30 + "zz") is None
    assert slot_in("0" * 30 + "10") is None        # 16: no such slot


def test_lists_held_in_the_state_from_before_slots_answer_until_they_expire() -> None:
    old = (shown("r1", 0, ["a", "b"]), shown("r2", 20 * HOUR, ["a", "b"]))
    state = FeedbackState(shown=old)
    state, outcome = attribute(state, feedback(FeedbackType.CLICK, "r1", "a", HOUR))
    assert outcome.unattributed is None
    assert [s.rec_id for s in state.shown] == ["r1", "r2"]
    state, outcome = attribute(state, feedback(FeedbackType.CLICK, "r2", "a", 30 * HOUR))
    assert outcome.unattributed is None
    assert [s.rec_id for s in state.shown] == ["r2"]            # r1 expired: dropped
    codec = StateCodec(FeedbackState)
    assert codec.decode(codec.encode(state)) == state


def test_lists_keep_their_features_as_float16_and_older_float64_lists_still_answer() -> None:
    """A remembered list's features take 2 bytes each (float16) instead of msgpack's 9:
    the feedback state written per list is a third of what it was; a state written before
    (float64 ``features``) decodes and attributes as it did."""
    features = [0.8134, 2.5, 0.0417, 0.0, 1.0, 0.31, 0.12, 0.05, -1.7, 0.6, 0.9, 0.25]
    names = [f"item-{n:05d}" for n in range(10)]
    packed = Shown(rec_id="r" * 32, model_version="default-3", variant="frozen",
                   produced_at=0, items=tuple(ShownItem.of(item, n, [f + n for f in features])
                                              for n, item in enumerate(names)))
    wide = msgspec.structs.replace(packed, items=tuple(
        ShownItem(item, n, tuple(f + n for f in features)) for n, item in enumerate(names)))
    codec = StateCodec(FeedbackState)
    small, large = (len(codec.encode(FeedbackState(shown=(s,)))) for s in (packed, wide))
    assert small < large / 2.5, (small, large)
    for item in codec.decode(codec.encode(FeedbackState(shown=(packed,)))).shown[0].items:
        assert np.allclose(item.values(), [f + item.position for f in features], rtol=1e-3)
    old = codec.decode(codec.encode(FeedbackState(shown=(wide,))))
    _, outcome = attribute(old, feedback(FeedbackType.CLICK, "r" * 32, "item-00003", 1))
    assert outcome.unattributed is None
    assert outcome.examples[0].features == tuple(3.0 for _ in features)
    legacy = msgspec.msgpack.encode(["item-00001", 1, [0.5, 2.0]])   # three fields, as before
    assert msgspec.msgpack.decode(legacy, type=ShownItem).values() == (0.5, 2.0)
