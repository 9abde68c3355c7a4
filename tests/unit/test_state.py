from __future__ import annotations

import msgspec

from app.contract.records import Feedback, FeedbackType, ItemDelete, ItemUpsert, UserProfile, View
from app.core.state import (
    FeedbackState,
    ItemState,
    ProfileState,
    StateCodec,
    UserState,
    apply_batch,
    fold_event,
    fold_feedback,
    fold_item,
    fold_profile,
)


def view(event_id: str, ts: int = 1000) -> View:
    return View(v=1, event_id=event_id, user_id="u", ts=ts, item_id="i")


def test_duplicates_inside_one_batch_are_dropped() -> None:
    result = apply_batch(UserState(), [view("a"), view("a"), view("b")], 10, fold_event)
    assert result.duplicates == 1
    assert [r.event_id for r in result.applied] == ["a", "b"]
    assert result.state.counts == {"view": 2}


def test_duplicates_across_batches_are_dropped() -> None:
    first = apply_batch(UserState(), [view("a"), view("b")], 10, fold_event)
    second = apply_batch(first.state, [view("b"), view("c")], 10, fold_event)
    assert second.duplicates == 1
    assert second.state.counts == {"view": 3}
    assert second.state.seen == ("a", "b", "c")


def test_the_window_is_bounded_and_keeps_the_newest() -> None:
    result = apply_batch(UserState(), [view(str(i)) for i in range(10)], 4, fold_event)
    assert result.state.seen == ("6", "7", "8", "9")
    again = apply_batch(result.state, [view("0"), view("9")], 4, fold_event)
    assert again.duplicates == 1  # "0" left the window: applied again, by design
    assert again.state.counts == {"view": 11}


def test_fold_event_tracks_activity_span() -> None:
    result = apply_batch(UserState(), [view("a", 50), view("b", 20), view("c", 70)], 10,
                         fold_event)
    assert (result.state.first_ts, result.state.last_ts) == (20, 70)


def test_item_upsert_delete_and_out_of_order() -> None:
    up = ItemUpsert(v=1, event_id="1", item_id="i", ts=100, title="Alien")
    old = ItemUpsert(v=1, event_id="0", item_id="i", ts=50, title="Old title")
    gone = ItemDelete(v=1, event_id="2", item_id="i", ts=200)
    state = fold_item(ItemState(), up)
    assert state.item == up
    assert fold_item(state, old).item == up  # an older version never wins
    assert fold_item(state, gone).item is None


def test_profile_keeps_the_newest() -> None:
    new = UserProfile(v=1, event_id="2", user_id="u", ts=200, locale="fr")
    old = UserProfile(v=1, event_id="1", user_id="u", ts=100, locale="de")
    assert fold_profile(fold_profile(ProfileState(), new), old).profile == new


def test_feedback_counts_by_type() -> None:
    fb = Feedback(v=1, type=FeedbackType.CLICK, event_id="f", user_id="u", rec_id="r",
                  item_id="i", ts=5)
    assert fold_feedback(FeedbackState(), fb).counts == {"click": 1}


def test_codec_round_trip_and_old_values_still_decode() -> None:
    codec = StateCodec(UserState)
    state = UserState(seen=("a",), counts={"view": 1}, first_ts=1, last_ts=2)
    assert codec.decode(codec.encode(state)) == state
    assert codec.decode(None) == UserState()
    older = msgspec.msgpack.encode([["a"], {"view": 1}])  # written before first_ts existed
    assert codec.decode(older) == UserState(seen=("a",), counts={"view": 1})


def test_state_bytes_per_user_is_bounded() -> None:
    codec = StateCodec(UserState)
    ids = [f"{'x' * 40}-{i:08d}" for i in range(1000)]
    result = apply_batch(UserState(), [view(i) for i in ids], 128, fold_event)
    size = len(codec.encode(result.state))
    assert size < 128 * 52 + 64  # window x (id bytes + msgpack overhead) + counters
