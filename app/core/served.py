"""The latest list computed for each user, so a pull can answer without scoring again.

Every event batch already computes a user's recommendations (to publish them); a pull for
that user soon after, with the same request, would compute the same list. A cached list
is served only while it is exactly what a fresh computation would start from: the user's
state has not changed (same last event time), the ranker version is the same, the request
asks for no more items than were computed and has no filters of its own, and it is younger
than ``ttl_ms`` (the global signals, popularity and co-visitation, move on meanwhile; this
bounds how far). A caller may take an older one (``stale``) and score the user again right
after answering (stale-while-revalidate: the pipeline does, so an expired list costs the
request nothing; it is replaced when its user's turn comes, one user at a time: a few
milliseconds, or a second or two behind a burst of a few hundred expired users). Bounded:
the least recently used users are dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from app.contract.records import RecommendedItem
from app.core.recommender import Request


@dataclass(frozen=True, slots=True)
class _Entry:
    state_ts: int
    version: str
    k: int
    at_ms: float
    items: list[RecommendedItem]


def cacheable(request: Request) -> bool:
    """Only the plain request (no exclusions, no category rules, seen items left out)."""
    return (not request.exclude and request.allow_categories is None
            and not request.deny_categories and request.exclude_seen)


@dataclass
class ServedLists:
    capacity: int = 50_000
    ttl_ms: float = 30_000.0
    _entries: OrderedDict[bytes, _Entry] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, state_ts: int, version: str, request: Request, now_ms: float,
            stale: bool = False) -> list[RecommendedItem] | None:
        """The user's cached list for ``request``, if it answers it (and is younger than
        ``ttl_ms``, unless ``stale``: ``expired`` then says whether it is older)."""
        entry = self._entries.get(key)
        if (entry is None or not cacheable(request) or entry.state_ts != state_ts
                or entry.version != version or entry.k < request.k
                or (not stale and now_ms - entry.at_ms > self.ttl_ms)):
            return None
        self._entries.move_to_end(key)
        return entry.items[: request.k]

    def expired(self, key: bytes, now_ms: float) -> bool:
        """Whether the user's cached list is older than ``ttl_ms`` (or there is none)."""
        entry = self._entries.get(key)
        return entry is None or now_ms - entry.at_ms > self.ttl_ms

    def put(self, key: bytes, state_ts: int, version: str, request: Request,
            items: list[RecommendedItem], now_ms: float) -> None:
        if self.capacity <= 0 or not cacheable(request):
            return
        self._entries[key] = _Entry(state_ts, version, request.k, now_ms, items)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def forget(self, key: bytes) -> None:
        self._entries.pop(key, None)
