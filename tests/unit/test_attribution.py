"""Feedback joined with what was shown: examples, conversions, unattributable counts."""

from __future__ import annotations

import msgspec
import numpy as np

from app.contract.records import Feedback, FeedbackType
from app.core.attribution import attribute, remember
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
    state = remember(FeedbackState(), shown("r1", 0, ["a", "b", "c", "d"]), now_ms=0)
    state, outcome = attribute(state, feedback(FeedbackType.CLICK, "r1", "c", HOUR))
    assert outcome.unattributed is None
    # c (feature 2) against a (0), b (1) and d (3): each difference 1, its negation 0
    assert [(e.features[0], e.reward) for e in outcome.examples] == [
        (2.0, 1.0), (-2.0, 0.0), (1.0, 1.0), (-1.0, 0.0), (-1.0, 1.0), (1.0, 0.0)]
    assert all(e.features[1] == 0.0 for e in outcome.examples)   # equal features cancel
    assert not outcome.conversion
    assert state.counts == {"attributed:click": 1}
    state, first = attribute(state, feedback(FeedbackType.PURCHASE, "r1", "a", 2 * HOUR))
    assert len(first.examples) == 6
    assert {e.weight for e in first.examples} == {3.0}
    assert first.conversion
    late = attribute(state, feedback(FeedbackType.PURCHASE, "r1", "a", 23 * HOUR),
                     conversion_window_ms=HOUR)[1]
    assert not late.conversion


def test_impressions_are_counted_and_teach_nothing() -> None:
    state = remember(FeedbackState(), shown("r1", 0, ["a", "b"]), now_ms=0)
    state, outcome = attribute(state, feedback(FeedbackType.IMPRESSION, "r1", "b", 1))
    assert outcome.examples == ()
    assert outcome.unattributed is None
    assert state.counts == {"attributed:impression": 1}


def test_unattributable_feedback_is_counted_with_its_reason() -> None:
    state = remember(FeedbackState(), shown("r1", 0, ["a", "b"]), now_ms=0)
    for rec_id, item, ts, reason in [("nope", "a", 1, "unknown_rec"),
                                     ("r1", "z", 1, "item_not_shown"),
                                     ("r1", "a", 25 * HOUR, "expired")]:
        state, outcome = attribute(state, feedback(FeedbackType.CLICK, rec_id, item, ts))
        assert outcome.unattributed == reason
        assert outcome.examples == ()
    assert state.counts == {"unattributed:unknown_rec": 1, "unattributed:item_not_shown": 1,
                            "unattributed:expired": 1}


def test_memory_is_bounded_by_count_and_age_and_survives_encoding() -> None:
    state = FeedbackState()
    for n in range(50):
        state = remember(state, shown(f"r{n}", n * HOUR, ["a"]), now_ms=n * HOUR,
                         max_shown=8)
    assert [s.rec_id for s in state.shown] == [f"r{n}" for n in range(42, 50)]
    state = remember(state, shown("late", 80 * HOUR, ["a"]), now_ms=80 * HOUR)
    assert [s.rec_id for s in state.shown] == ["late"]          # the rest expired
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
