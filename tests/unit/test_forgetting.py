"""Forgetting a user for good (app.core.forgetting): the marker, what it drops, its sweep."""

from __future__ import annotations

import msgspec

from app.core.forgetting import (
    NOT_FORGOTTEN,
    Markers,
    after_request,
    is_marker,
    marker,
    swept,
)
from app.core.state import StateCodec, UserState


def test_a_marker_holds_the_request_and_nothing_else() -> None:
    mark = marker(1_000, 3)
    assert is_marker(mark)
    assert mark.forgotten == (1_000, 3)
    assert not is_marker(UserState())
    assert not is_marker(msgspec.structs.replace(mark, counts={"view": 1}))
    assert not is_marker(msgspec.structs.replace(mark, seen=b"12345678"))
    # a marker written before the id window was packed (an empty tuple) still is one
    codec = StateCodec(UserState)
    fields = list(msgspec.structs.astuple(mark))
    fields[0] = []                              # seen, as the tuple it was
    before = codec.decode(msgspec.msgpack.encode(fields[:-1]))   # and no purchases field
    assert before.seen == ()
    assert is_marker(before)


def test_input_up_to_the_request_is_dropped_after_it_kept() -> None:
    assert after_request([999, 1_000, 1_001], 1_000) == [False, False, True]


def test_a_swept_marker_is_a_tombstone_a_rebuilt_state_is_unmarked() -> None:
    assert swept(marker(1_000, 3)) is None
    back = msgspec.structs.replace(marker(1_000, 3), counts={"view": 1}, last_ts=2_000)
    after = swept(back)
    assert after is not None
    assert after.forgotten == NOT_FORGOTTEN
    assert after.counts == {"view": 1}


def test_a_state_stored_before_markers_existed_reads_as_not_forgotten() -> None:
    # (the fields up to before ``forgotten``: ``purchases`` came after it)
    old = msgspec.msgpack.encode(list(msgspec.structs.astuple(UserState()))[:-2])
    assert StateCodec(UserState).decode(old).forgotten == NOT_FORGOTTEN


def test_markers_are_due_per_partition_oldest_first_and_move_with_their_key() -> None:
    markers = Markers()
    markers.add(b"a", 100, 0)
    markers.add(b"b", 200, 0)
    markers.add(b"c", 100, 1)
    assert markers.due(0, 150) == [b"a"]
    assert markers.due(0, 300) == [b"a", b"b"]
    markers.add(b"a", 250, 1)                # marked again, elsewhere: one entry
    assert len(markers) == 3
    assert markers.due(0, 300) == [b"b"]
    markers.remove(b"b", 0)
    assert markers.due(0, 10**9) == []
    assert markers.due(1, 10**9) == [b"c", b"a"]


def test_a_marker_found_after_a_takeover_is_guarded_from_then() -> None:
    """A worker that takes a partition over (after an outage longer than the guard) reads
    its uncommitted input again first: the marker's guard starts when it is found."""
    markers = Markers()
    markers.add(b"old", 100, 0, found_ms=10_000)
    markers.add(b"new", 5_000, 0, found_ms=1_000)
    assert markers.due(0, 6_000) == [b"new"]
    assert sorted(markers.due(0, 10_001)) == [b"new", b"old"]
