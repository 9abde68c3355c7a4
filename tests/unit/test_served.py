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
    assert not cache.expired(b"u", 500)
    # an expired list is still there for a caller that scores the user again after
    # answering (stale-while-revalidate); nothing else about it may have changed
    assert cache.expired(b"u", 1001)
    assert cache.expired(b"other", 0)
    assert len(cache.get(b"u", 5, "v1", Request(k=3), 1001, stale=True) or []) == 3
    assert cache.get(b"u", 6, "v1", Request(k=3), 1001, stale=True) is None


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


def test_an_expired_list_is_answered_at_once_and_its_user_scored_again_after() -> None:
    """Stale-while-revalidate in the worker: a pull that finds its user's list expired gets
    it (no scoring on the request's path), and the user is scored afresh right after, once
    however many pulls found it meanwhile; the fresh list then answers."""
    import asyncio
    import time
    from types import SimpleNamespace

    from app.core.state import UserState
    from app.metrics import Metrics
    from app.worker.pipeline import Pipeline

    state = UserState(last_ts=5)
    scored: list[bytes] = []
    pipeline = Pipeline.__new__(Pipeline)
    pipeline.metrics = Metrics.create()
    pipeline.served = ServedLists(capacity=10, ttl_ms=1000)
    pipeline._stale, pipeline._refresher = {}, None
    pipeline._users = lambda key: state
    pipeline.feedback = SimpleNamespace(variant=lambda user: "a",
                                        params_for=lambda variant: SimpleNamespace(version="v"))
    again = items(2)

    def score(state: UserState, request: Request, key: bytes = b"", fresh: bool = False
              ) -> tuple[list[RecommendedItem], str]:
        assert fresh
        scored.append(key)
        pipeline.served.put(key, state.last_ts, "v", request, again, time.monotonic() * 1000)
        return again, "v"

    async def run() -> None:
        old = time.monotonic() * 1000 - 5000   # computed 5 s ago: expired
        pipeline.served.put(b"u", 5, "v", Request(k=10), items(10), old)
        answer = Pipeline.recommend_now(pipeline, state, Request(k=10), b"u")
        assert len(answer[0]) == 10          # the expired list, at once
        Pipeline.recommend_now(pipeline, state, Request(k=10), b"u")
        pipeline.recommend_now = score      # (what the refresh calls)
        assert scored == []                  # not on the request's path
        assert pipeline._refresher is not None
        await pipeline._refresher
        assert scored == [b"u"]              # once for both pulls
        assert not pipeline.served.expired(b"u", time.monotonic() * 1000)

    asyncio.run(run())
    stale = pipeline.metrics.pull_cache.labels("stale")._value.get()
    assert stale == 2
