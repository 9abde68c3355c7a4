"""The pull cache serves a user's latest list only while a fresh one would be the same."""

from __future__ import annotations

from app.contract.records import Explanation, RecommendedItem
from app.core.recommender import Request
from app.core.served import ServedLists


def items(n: int) -> list[RecommendedItem]:
    return [RecommendedItem(item_id=f"i{r}", rank=r, score=1.0 / r,
                            explanation=Explanation(kind="popular", text="popular right now"))
            for r in range(1, n + 1)]


def test_a_list_is_served_only_while_nothing_it_depends_on_changed() -> None:
    cache = ServedLists(capacity=10, ttl_ms=1000)
    cache.put(b"u", 5, "v1", Request(k=10), items(10), now_ms=0)
    assert [i.item_id for i in cache.get(b"u", 5, "v1", Request(k=3), 500) or []] == [
        "i1", "i2", "i3"]
    assert cache.get(b"u", 6, "v1", Request(k=3), 500) is None     # a newer event
    assert cache.get(b"u", 5, "v2", Request(k=3), 500) is None     # another ranker
    assert cache.get(b"u", 5, "v1", Request(k=11), 500) is None    # more than computed
    assert cache.get(b"u", 5, "v1", Request(k=3), 1001) is None    # too old
    assert cache.get(b"u", 5, "v1", Request(k=3, exclude=frozenset({"i1"})), 500) is None
    assert cache.get(b"u", 5, "v1", Request(k=3, exclude_seen=False), 500) is None
    assert cache.get(b"other", 5, "v1", Request(k=3), 500) is None


def test_filtered_requests_are_not_stored_and_the_least_recent_user_goes_first() -> None:
    cache = ServedLists(capacity=2, ttl_ms=1000)
    cache.put(b"a", 1, "v", Request(k=5, deny_categories=frozenset({"x"})), items(5), 0)
    assert len(cache) == 0
    cache.put(b"a", 1, "v", Request(k=5), items(5), 0)
    cache.put(b"b", 1, "v", Request(k=5), items(5), 0)
    assert cache.get(b"a", 1, "v", Request(k=5), 1) is not None   # a is now the newer
    cache.put(b"c", 1, "v", Request(k=5), items(5), 0)
    assert cache.get(b"b", 1, "v", Request(k=5), 1) is None
    assert cache.get(b"a", 1, "v", Request(k=5), 1) is not None
    cache.forget(b"a")
    assert cache.get(b"a", 1, "v", Request(k=5), 1) is None
    assert len(ServedLists(capacity=0)) == 0
