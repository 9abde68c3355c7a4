"""Forgetting a user for good: once a user's state is deleted on request, input of theirs
from before the request must not build it again. It can still come: a worker that dies
before its group commits past the user's events reads them again, and events produced
before the request may wait in a backlog behind it (another topic, another pace).

So a forgotten user's state is not deleted at once but replaced by a *marker*: a state that
holds nothing but the request's time (the Kafka timestamp of the tombstone) and partition.
Every event or feedback record of the user whose Kafka timestamp is not after that time is
dropped (counted as ``forgotten``); later ones are the user coming back and build a new
state. A marker is swept (deleted: a changelog tombstone) once the guard
(``STREAMREC_FORGET_GUARD_SECONDS``) has passed since the request, or since the worker that
sweeps it took its partition over if that is later; a state the user rebuilt since loses
its mark.
What a marker keeps is the user's key (their id, or its pseudonym) for the guard's length.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from app.core.state import UserState

NOT_FORGOTTEN = (0, -1)


def marker(at_ms: int, partition: int) -> UserState:
    """The state a forgotten user leaves: the request's time and partition, nothing else."""
    return UserState(forgotten=(at_ms, partition))


def is_marker(state: UserState) -> bool:
    """Whether ``state`` is a forgotten user's marker and nothing more (the API answers as
    for a user it never knew)."""
    if state.forgotten == NOT_FORGOTTEN or state.seen:
        return False
    # (a marker written before the id window was packed holds an empty tuple, not b"")
    return msgspec.structs.replace(state, seen=b"") == marker(*state.forgotten)


def after_request(timestamps_ms: Sequence[int], forgotten_at_ms: int) -> list[bool]:
    """For each record's Kafka timestamp, whether it came after the request to forget (kept)
    or not (dropped: input from before the request, read again or late)."""
    return [ts > forgotten_at_ms for ts in timestamps_ms]


def swept(state: UserState) -> UserState | None:
    """What a marked state becomes once its guard has passed: nothing (a tombstone) if it is
    still only the marker, else the state the user rebuilt since, unmarked."""
    if is_marker(state):
        return None
    return msgspec.structs.replace(state, forgotten=NOT_FORGOTTEN)


class Markers:
    """This worker's markers by partition: which are due for sweeping. Built
    as users are forgotten, and again from the stored states after every assignment. A
    marker's guard runs from the request or from when this worker found it, whichever is
    later: a worker that takes a partition over (after a restart, however long the outage,
    or a rebalance) reads its uncommitted input again first, and the markers cover it."""

    __slots__ = ("_by_partition",)

    def __init__(self) -> None:
        self._by_partition: dict[int, dict[bytes, int]] = {}

    def add(self, key: bytes, at_ms: int, partition: int, found_ms: int = 0) -> None:
        for keys in self._by_partition.values():
            keys.pop(key, None)
        self._by_partition.setdefault(partition, {})[key] = max(at_ms, found_ms)

    def remove(self, key: bytes, partition: int) -> None:
        self._by_partition.get(partition, {}).pop(key, None)

    def due(self, partition: int, before_ms: int) -> list[bytes]:
        """Keys of ``partition`` whose guard started before ``before_ms``."""
        return [key for key, at in self._by_partition.get(partition, {}).items()
                if at < before_ms]

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._by_partition.values())
