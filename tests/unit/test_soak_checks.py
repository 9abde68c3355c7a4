"""The crash soak's checks on the output topic, on hand-made lists: what counts as a list
published twice, and which event a user's lists answer last."""

from __future__ import annotations

from app.soak.crash import repeated_lists


def test_lists_in_order_are_never_repeats() -> None:
    twice, answered = repeated_lists([(b"a", 1), (b"b", 5), (b"a", 3), (b"a", 4)])
    assert twice == 0
    assert answered == {b"a": 4, b"b": 5}


def test_a_list_answering_no_newer_event_is_a_repeat() -> None:
    # a batch processed twice after a kill: its list again (same source event), or a list
    # whose batch ended earlier than one already published (the batch cut differently)
    lists = [(b"a", 10), (b"a", 12), (b"a", 12), (b"a", 11), (b"b", 11), (b"a", 13)]
    twice, answered = repeated_lists(lists)
    assert twice == 2
    assert answered == {b"a": 13, b"b": 11}
