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
    seen_digest,
    window_of,
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
    assert second.state.seen == b"".join(seen_digest(i) for i in ("a", "b", "c"))


def test_the_window_keeps_8_byte_digests_and_windows_stored_before_still_count() -> None:
    """An id's digest is 8 bytes whatever the id, packed in one bytes value; a state
    written when the window held the ids themselves, or their base64 tokens, still drops
    a record it names, and moves to the packed form with its next batch."""
    import base64
    import hashlib

    digest = seen_digest("5b1c2f0e-9d7a-4c1e-8f3b-2a6d9e0c4b7f")
    assert len(digest) == 8
    assert digest != seen_digest("5b1c2f0e-9d7a-4c1e-8f3b-2a6d9e0c4b7e")
    # the 11-character token the window kept before (base64url of the same 64 bits)
    token = base64.urlsafe_b64encode(
        hashlib.blake2b(b"b", digest_size=8).digest())[:11].decode("ascii")
    for written_before in (UserState(seen=("a", "b"), counts={"view": 2}),
                           UserState(seen=("a", token), counts={"view": 2})):
        again = apply_batch(written_before, [view("b"), view("c")], 3, fold_event)
        assert again.duplicates == 1
        assert again.state.seen == b"".join(seen_digest(i) for i in ("a", "b", "c"))
        assert window_of(again.state.seen) == [seen_digest(i) for i in ("a", "b", "c")]
    import msgspec

    # in msgpack: 2 + 8 bytes an id, against 1 + 12 an id as tokens
    assert len(msgspec.msgpack.encode(again.state.seen)) == 2 + 3 * 8
    assert len(msgspec.msgpack.encode((token,) * 3)) == 1 + 3 * 12


def test_input_read_again_from_far_back_is_dropped_by_its_position() -> None:
    # a partition read again from an offset older than the id window reaches (a committed
    # offset ~20 s old in a crash soak applied 166 of a user's events twice): the state
    # remembers the position it applied up to
    events = [view(str(i)) for i in range(10)]
    at = [(1, 100 + i) for i in range(10)]
    first = apply_batch(UserState(), events, 4, fold_event, at)
    assert first.state.read_to == (1, 109)
    again = apply_batch(first.state, [*events, view("10")], 4, fold_event,
                        [*at, (1, 110)])
    assert again.duplicates == 10
    assert [r.event_id for r in again.applied] == ["10"]
    assert again.state.counts == {"view": 11}
    assert again.state.read_to == (1, 110)


def test_a_producer_retry_is_still_caught_by_its_id_and_a_new_partition_resets() -> None:
    first = apply_batch(UserState(), [view("a")], 10, fold_event, [(0, 5)])
    retry = apply_batch(first.state, [view("a")], 10, fold_event, [(0, 6)])  # sent twice
    assert retry.duplicates == 1
    assert retry.state.read_to == (0, 6)
    # the user's partition changed (topics repartitioned): positions there are new
    moved = apply_batch(retry.state, [view("b")], 10, fold_event, [(3, 2)])
    assert [r.event_id for r in moved.applied] == ["b"]
    assert moved.state.read_to == (3, 2)


def test_states_written_before_positions_decode_with_none_known() -> None:
    class OldUserState(msgspec.Struct, array_like=True, frozen=True):   # the layout before
        seen: tuple[str, ...] = ()
        counts: dict[str, int] = {}

    old = msgspec.msgpack.encode(OldUserState(seen=("a",), counts={"view": 1}))
    state = StateCodec(UserState).decode(old)
    assert state.counts == {"view": 1}
    assert state.read_to == (-1, -1)
    result = apply_batch(state, [view("b")], 10, fold_event, [(2, 0)])
    assert result.applied
    assert result.state.read_to == (2, 0)


def test_the_window_is_bounded_and_keeps_the_newest() -> None:
    result = apply_batch(UserState(), [view(str(i)) for i in range(10)], 4, fold_event)
    assert result.state.seen == b"".join(seen_digest(str(i)) for i in range(6, 10))
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
