"""From a user's state to ranked, explained recommendations.

Candidates come from three sources: the catalogue items nearest the user's interest
(encoder), the co-visitation neighbours of their recent items, and what is popular (the
fallback for new users). They are filtered, scored by the ranker, diversified with MMR and
explained. A worker holds one :class:`Recommender`; everything here runs in-process on
numpy arrays, without Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from app.contract.records import Explanation, RecommendedItem
from app.core.catalogue import CatalogueEntry, PriceStats, VectorIndex
from app.core.covisit import CoVisitation
from app.core.profile import DAY_MS, decay
from app.core.ranking import Candidates, RankerParams, Why, allowed, explain, mmr, score

FloatArray = npt.NDArray[np.float32]

SOURCES = frozenset({"encoder", "covisit", "popular"})
VERBS = {"view": "viewed", "add_to_cart": "added", "purchase": "bought", "search": "searched"}


@dataclass(frozen=True)
class ItemInfo:
    title: str
    category: str
    in_stock: bool
    added: int


@dataclass
class Catalogue:
    """The whole catalogue in memory: vectors in an index, attributes beside them."""

    dimension: int
    ann_threshold: int | None = None   # approximate search from this many items
    index: VectorIndex = field(init=False)
    items: dict[str, ItemInfo] = field(default_factory=dict)
    prices: dict[str, PriceStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = VectorIndex(self.dimension, ann_threshold=self.ann_threshold)

    def upsert(self, entry: CatalogueEntry) -> None:
        self.index.upsert(entry.item_id, entry.array(), available=entry.in_stock)
        known = self.items.get(entry.item_id)
        self.items[entry.item_id] = ItemInfo(entry.title, entry.category, entry.in_stock,
                                             known.added if known else entry.ts)
        if entry.price is not None and known is None:
            self.prices.setdefault(entry.category, PriceStats()).add(entry.price)

    def delete(self, item_id: str) -> None:
        self.index.remove(item_id)
        self.items.pop(item_id, None)


@dataclass
class Popularity:
    """Decayed interaction counts per item; ``top`` is refreshed at most every few seconds
    of event time so a hot path never sorts the catalogue."""

    half_life_ms: int = 7 * DAY_MS
    scores: dict[str, tuple[float, int]] = field(default_factory=dict)
    _top: list[tuple[str, float]] = field(default_factory=list)
    _top_at: int = -1

    def add(self, item_id: str, weight: float, ts: int) -> None:
        value, at = self.scores.get(item_id, (0.0, ts))
        if ts >= at:
            self.scores[item_id] = (value * decay(ts - at, self.half_life_ms) + weight, ts)
        else:
            self.scores[item_id] = (value + weight * decay(at - ts, self.half_life_ms), at)

    def value(self, item_id: str, now: int) -> float:
        value, at = self.scores.get(item_id, (0.0, now))
        return value * decay(now - at, self.half_life_ms)

    def top(self, k: int, now: int, refresh_ms: int = 5_000) -> list[tuple[str, float]]:
        if self._top_at < 0 or now - self._top_at > refresh_ms or len(self._top) < k:
            ranked = sorted(((i, self.value(i, now)) for i in self.scores),
                            key=lambda kv: kv[1], reverse=True)
            self._top, self._top_at = ranked[: max(k, 100)], now
        return self._top[:k]


@dataclass(frozen=True)
class UserView:
    """What the recommender needs to know about a user."""

    interest: FloatArray | None
    recent: Sequence[tuple[str, str, float]]     # (item id, event type, weight), newest last
    purchased: set[str]
    query: tuple[str, FloatArray] | None = None  # the last search, embedded
    segments: tuple[str, ...] = ()   # profile segments ("age:25-34", ...), when known


@dataclass(frozen=True)
class Request:
    k: int = 10
    exclude: frozenset[str] = frozenset()
    exclude_seen: bool = True  # leave out the user's recent items (discovery, not reminders)
    allow_categories: frozenset[str] | None = None
    deny_categories: frozenset[str] = frozenset()


def with_sources(params: RankerParams, sources: frozenset[str]) -> RankerParams:
    """Ranker parameters for an ablation: a switched-off source's score term is off too."""
    return replace(params,
                   semantic=params.semantic if "encoder" in sources else 0.0,
                   covisit=params.covisit if "covisit" in sources else 0.0)


@dataclass
class Recommender:
    catalogue: Catalogue
    covisit: CoVisitation = field(default_factory=CoVisitation)
    popularity: Popularity = field(default_factory=Popularity)
    params: RankerParams = field(default_factory=RankerParams)
    per_source: int = 100
    covisit_recent: int = 20       # the recent items whose neighbours are candidates
    covisit_neighbours: int = 50   # neighbours taken per recent item
    sources: frozenset[str] = SOURCES  # candidate sources switched on (ablations)
    # what is popular per profile segment: the answer for new users whose profile is known
    segment_popularity: dict[str, Popularity] = field(default_factory=dict)
    new_user_events: int = 5       # fewer recent items than this: a new user

    def learn_segments(self, segments: Sequence[str], item_id: str, weight: float,
                       ts: int) -> None:
        for segment in segments:
            self.segment_popularity.setdefault(
                segment, Popularity(half_life_ms=self.popularity.half_life_ms)
            ).add(item_id, weight, ts)

    def _new_with_profile(self, user: UserView) -> bool:
        """A new user (few recent items) whose profile segments are known."""
        return len(user.recent) < self.new_user_events and bool(user.segments)

    def _segment_value(self, user: UserView, item: str, now: int) -> float:
        return sum(self.segment_popularity[s].value(item, now) for s in user.segments
                   if s in self.segment_popularity)

    def _popularity(self, user: UserView, ids: list[str], now: int, new_user: bool
                    ) -> FloatArray:
        """Global popularity; for a new user with a known profile, their segments' first:
        segment popularity plus half the overall one, each scaled to [0, 1]."""
        overall = np.array([self.popularity.value(i, now) for i in ids], dtype=np.float32)
        if not new_user:
            return overall
        segment = np.array([self._segment_value(user, i, now) for i in ids],
                           dtype=np.float32)
        blended: FloatArray = (0.5 * overall / max(float(overall.max(initial=0.0)), 1e-9)
                               + segment / max(float(segment.max(initial=0.0)), 1e-9))
        return blended.astype(np.float32)

    def candidates(self, user: UserView, request: Request, now: int
                   ) -> tuple[Candidates, dict[str, int]]:
        """The union of every source's candidates, with their features; plus how many each
        source proposed (a metric)."""
        blocked = self._blocked(user, request)
        found: dict[str, None] = {}
        counts = {"encoder": 0, "covisit": 0, "popular": 0}
        if user.interest is not None and "encoder" in self.sources:
            for item, _ in self.catalogue.index.search(user.interest, self.per_source, blocked):
                found[item] = None
                counts["encoder"] += 1
        if user.query is not None and "encoder" in self.sources:
            for item, _ in self.catalogue.index.search(user.query[1], self.per_source // 4,
                                                       blocked):
                found[item] = None
        recent = user.recent[-self.covisit_recent:]
        co = self.covisit.candidates(((i, w) for i, _, w in recent), self.covisit_neighbours) \
            if "covisit" in self.sources else {}
        for item in sorted(co, key=lambda i: co[i][0], reverse=True)[: self.per_source]:
            if item in self.catalogue.items:
                found[item] = None
                counts["covisit"] += 1
        popular = self.popularity.top(self.per_source // 2, now) \
            if "popular" in self.sources else []
        new_user = self._new_with_profile(user)
        if new_user and "popular" in self.sources:
            for segment in user.segments:
                if segment in self.segment_popularity:
                    popular = self.segment_popularity[segment].top(self.per_source // 4,
                                                                   now) + popular
        for item, _ in popular:
            if item in self.catalogue.items and item not in found:
                found[item] = None
                counts["popular"] += 1
        ids = [i for i in found if i in self.catalogue.index]
        info = [self.catalogue.items[i] for i in ids]
        candidates = Candidates(
            item_ids=ids,
            vectors=self.catalogue.index.vectors(ids) if ids else
            np.zeros((0, self.catalogue.dimension), dtype=np.float32),
            covisit=np.array([co[i][0] if i in co else 0.0 for i in ids], dtype=np.float32),
            covisit_source=[co[i][1] if i in co else None for i in ids],
            popularity=self._popularity(user, ids, now, new_user),
            freshness=np.array([decay(now - x.added, 30 * DAY_MS) for x in info],
                               dtype=np.float32),
            categories=[x.category for x in info],
        )
        return candidates, counts

    def recommend(self, user: UserView, request: Request, now: int
                  ) -> tuple[list[RecommendedItem], dict[str, int]]:
        candidates, counts = self.candidates(user, request, now)
        if not candidates.item_ids:
            return [], counts
        blocked = self._blocked(user, request) | {
            i for i in candidates.item_ids if not self.catalogue.items[i].in_stock}
        keep = allowed(candidates, blocked,
                       set(request.allow_categories) if request.allow_categories else None,
                       set(request.deny_categories))
        scored = score(user.interest, candidates, self.params)
        relevance = np.where(keep, scored.total, -np.inf).astype(np.float32)
        rows = [r for r in mmr(relevance, candidates.vectors, request.k, self.params.mmr_lambda)
                if np.isfinite(relevance[r])]
        kinds = {item: kind for item, kind, _ in user.recent}
        new_user = self._new_with_profile(user)
        history = [(i, self.catalogue.index.vector(i)) for i, _, _ in user.recent[-20:]
                   if i in self.catalogue.index]
        out = []
        for rank, row in enumerate(rows, start=1):
            why = explain(row, candidates, scored,
                          [(i, v) for i, v in history if v is not None], user.query)
            out.append(RecommendedItem(
                item_id=candidates.item_ids[row], rank=rank, score=float(scored.total[row]),
                explanation=self._explanation(
                    why, kinds, new_user and self._segment_value(
                        user, candidates.item_ids[row], now) > 0),
            ))
        return out, counts

    @staticmethod
    def _blocked(user: UserView, request: Request) -> set[str]:
        blocked = set(request.exclude) | user.purchased
        if request.exclude_seen:
            blocked.update(item for item, _, _ in user.recent)
        return blocked

    def _explanation(self, why: Why, kinds: dict[str, str], segment_popular: bool = False
                     ) -> Explanation:
        if why.kind == "search" and why.query is not None:
            return Explanation(kind="search", text=f"matches your search '{why.query}'",
                               query=why.query)
        if why.item_id is not None:
            info = self.catalogue.items.get(why.item_id)
            title = info.title if info else why.item_id
            verb = VERBS.get(kinds.get(why.item_id, "view"), "viewed")
            if why.kind == "covisit":
                return Explanation(kind="covisit",
                                   text=f"people who {verb} {title} also chose this",
                                   item_id=why.item_id)
            return Explanation(kind="history", text=f"because you {verb} {title}",
                               item_id=why.item_id)
        if segment_popular:
            return Explanation(kind="popular", text="popular with people like you")
        return Explanation(kind="popular", text="popular right now")
