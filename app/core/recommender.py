"""From a user's state to ranked, explained recommendations.

Candidates come from the catalogue items nearest the user's interest (encoder), the
co-visitation neighbours of their recent items, what is popular (the fallback for new
users), the behaviour model's picks when one is served, and, for a user coming back after
a while, what is trending (popular over a recent window). They are filtered, scored by
the ranker, diversified with MMR and explained. Time is event time: a list is asked for at
``now`` (the stream's clock), and a user whose last event is older is *away*: their
presence, 2 ** (-away / AWAY_HALF_LIFE_MS), discounts what their history says and their
absence (1 - presence) weighs what is trending (app.core.ranking). A worker holds one
:class:`Recommender`; everything here runs in-process on numpy arrays, without Kafka.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import repeat

import numpy as np
import numpy.typing as npt

from app.contract.records import Explanation, RecommendedItem
from app.core import consumed
from app.core.behaviour import ItemSpace
from app.core.catalogue import CatalogueEntry, PriceStats, VectorIndex
from app.core.covisit import CoVisitation
from app.core.learning import features_of
from app.core.profile import DAY_MS
from app.core.ranking import (
    RECENT_FEATURES,
    Candidates,
    RankerParams,
    Why,
    allowed,
    at_scales,
    explain,
    mmr,
    mmr_many,
    project,
    score,
)

FloatArray = npt.NDArray[np.float32]

SOURCES = frozenset({"encoder", "covisit", "popular", "sequence", "trending"})
FRESHNESS_HALF_LIFE_MS = 30 * DAY_MS  # a new item's freshness halves every 30 days
# what is trending: counts over the shortest of these windows (days) that holds at least
# TRENDING_EVIDENCE interactions (a busy stream reads the last day, a slow one weeks)
TRENDING_WINDOWS_DAYS = (1, 3, 9, 27)
TRENDING_EVIDENCE = 10_000.0
TRENDING_BUCKET_ITEMS = 1_000   # items a closed hour or day of trending counts keeps
AWAY_HALF_LIFE_MS = DAY_MS            # a user's presence halves every day away
HOUR_MS = 3_600_000
AWAY_MIN_MS = HOUR_MS                 # away for less than an hour: not away at all
QUERY_MARGIN = 64        # items kept beyond what a query needs, for the ones a user blocks
CONSUMED_MARGIN = 3      # at most this many per_source lists of consumed items skipped
QUERY_CACHE_SIZE = 1024  # recent queries whose nearest items are kept
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
    # per index row, its item's ``added`` and category (what every candidate reads)
    _added: npt.NDArray[np.float64] = field(init=False, repr=False)
    _categories: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = VectorIndex(self.dimension, ann_threshold=self.ann_threshold)
        self._added = np.zeros(0, dtype=np.float64)
        self._categories = []

    def upsert(self, entry: CatalogueEntry) -> None:
        self.index.upsert(entry.item_id, entry.array(), available=entry.in_stock)
        known = self.items.get(entry.item_id)
        info = self.items[entry.item_id] = ItemInfo(entry.title, entry.category,
                                                    entry.in_stock,
                                                    known.added if known else entry.ts)
        row = self.index.row(entry.item_id)
        assert row is not None
        if row >= len(self._added):
            grow = max(row + 1, 2 * len(self._added)) - len(self._added)
            self._added = np.concatenate([self._added, np.zeros(grow)])
            self._categories.extend([""] * grow)
        self._added[row] = info.added
        self._categories[row] = info.category
        if entry.price is not None and known is None:
            self.prices.setdefault(entry.category, PriceStats()).add(entry.price)

    def delete(self, item_id: str) -> None:
        self.index.remove(item_id)
        self.items.pop(item_id, None)

    def added_at(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """When each item held in index ``rows`` was first catalogued."""
        added: npt.NDArray[np.float64] = self._added[rows]
        return added

    def categories_at(self, rows: Sequence[int]) -> list[str]:
        categories = self._categories
        return [categories[r] for r in rows]


@dataclass
class Popularity:
    """Decayed interaction counts per item.

    Every count decays at the same rate, so each is stored scaled to a common reference
    time (``weight * 2 ** ((ts - reference) / half_life)``): adding is one multiply, the
    order of items never changes with time, and reading many values is one dict lookup
    each and one shared factor (the reference moves forward before the scale overflows)."""

    half_life_ms: int = 7 * DAY_MS
    scores: dict[str, float] = field(default_factory=dict)
    reference: int | None = None
    # the TOP_KEPT strongest items: scaled scores only grow, so an item outside this set
    # enters it only by overtaking its weakest member, and `top` never scans the catalogue
    _top: dict[str, None] = field(default_factory=dict)
    _ranked: list[str] | None = None
    _floor: float = 0.0   # a lower bound of the weakest kept score
    _latest: int = 0      # the newest event time counted
    _total: float = 0.0   # every count, scaled like the scores

    REBASE_HALF_LIVES = 256.0  # 2 ** 256 is far inside float64
    TOP_KEPT = 256

    def _scale(self, ts: int) -> float:
        if self.reference is None:
            self.reference = ts
        exponent = (ts - self.reference) / self.half_life_ms
        if exponent > self.REBASE_HALF_LIVES:
            shrink = 0.5 ** exponent
            self.scores = {i: v * shrink for i, v in self.scores.items()}
            self._floor *= shrink
            self._total *= shrink
            self.reference, exponent = ts, 0.0
        return float(2.0 ** max(exponent, -1074.0))

    def add(self, item_id: str, weight: float, ts: int) -> None:
        self._latest = max(self._latest, ts)
        scaled = weight * self._scale(ts)   # first: rescaling may replace every score
        self._total += scaled
        score = self.scores[item_id] = self.scores.get(item_id, 0.0) + scaled
        self._rerank(item_id, score)

    @property
    def latest(self) -> int:
        """The newest event time counted (0: none)."""
        return self._latest

    def merge(self, scores: Mapping[str, float], reference: int, latest: int) -> None:
        """Add the counts of another Popularity of the same half-life (its ``scores``,
        scaled to its ``reference``, newest count at ``latest``): each is a sum of weights
        scaled to that reference, so it adds here as one count at that time."""
        for item_id, scaled in scores.items():
            self.add(item_id, scaled, reference)
        if scores:
            self._latest = max(self._latest, latest)

    def set(self, item_id: str, value: float, at: int) -> None:
        """Make ``item_id``'s count ``value`` at time ``at`` (an item's entry of the global
        statistics, which every worker follows), whatever it was."""
        self._latest = max(self._latest, at)
        scaled = value * self._scale(at)
        before = self.scores.get(item_id, 0.0)
        self._total += scaled - before
        self.scores[item_id] = scaled
        if scaled < before and item_id in self._top:   # the one way a kept score shrinks
            self._floor = min(self._floor, scaled)
            self._ranked = None
            return
        self._rerank(item_id, scaled)

    def _rerank(self, item_id: str, score: float) -> None:
        """Keep ``_top`` (the TOP_KEPT strongest) right after ``item_id``'s score grew."""
        top = self._top
        if item_id in top:
            self._ranked = None
        elif len(top) < self.TOP_KEPT:
            top[item_id] = None
            self._ranked = None
        elif score > self._floor:
            weakest = min(top, key=self.scores.__getitem__)
            self._floor = self.scores[weakest]   # kept scores only grow from here
            if score > self._floor:
                del top[weakest]
                top[item_id] = None
                self._ranked = None

    def _factor(self, now: int) -> float:
        """Scaled scores to counts at ``now``; never at a time before the newest count (a
        user whose last event is years old asks at that time: decaying later counts back to
        it would be growth, by 2 ** (years / half-life), and overflow)."""
        if self.reference is None:
            return 0.0
        return float(0.5 ** ((max(now, self._latest) - self.reference) / self.half_life_ms))

    def value(self, item_id: str, now: int) -> float:
        return self.scores.get(item_id, 0.0) * self._factor(now)

    def total(self, now: int) -> float:
        """Every count, decayed to ``now``: how much evidence the counts hold."""
        return self._total * self._factor(now)

    def values(self, item_ids: Sequence[str], now: int) -> FloatArray:
        """The decayed counts of ``item_ids`` at ``now`` (0 for unknown items)."""
        scores = self.scores
        raw = np.fromiter(map(scores.get, item_ids, repeat(0.0, len(item_ids))),
                          dtype=np.float64, count=len(item_ids))
        return (raw * self._factor(now)).astype(np.float32)

    def top(self, k: int, now: int) -> list[tuple[str, float]]:
        """The k items with the highest decayed counts at ``now``, highest first."""
        factor = self._factor(now)
        return [(i, self.scores[i] * factor) for i in self.ranked(k)]

    def ranked(self, k: int) -> list[str]:
        """The ids of ``top(k, now)``, without their counts (the order is the same at
        every time)."""
        if k > self.TOP_KEPT:
            return sorted(self.scores, key=self.scores.__getitem__, reverse=True)[:k]
        if self._ranked is None:
            self._ranked = sorted(self._top, key=self.scores.__getitem__, reverse=True)
        return self._ranked[:k]


@dataclass
class Window:
    """Interaction counts over a sliding window of event time: the last ``span`` buckets
    (hours or days, ``bucket_ms``) up to the newest event (not decay: an item watched
    steadily a month ago weighs nothing once the month is out, and last week's counts are
    not shrunk). Totals are kept as events arrive, so reading is a lookup."""

    days: int
    bucket_ms: int
    buckets: dict[int, dict[str, float]]   # shared by the windows of one resolution
    counts: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    at_bucket: int | None = None   # the bucket ``counts`` ends at (the newest event's)

    @property
    def span(self) -> int:
        return self.days * DAY_MS // self.bucket_ms

    def add(self, item_id: str, weight: float, bucket: int) -> None:
        if self.at_bucket is None:
            self.at_bucket = bucket
        if bucket > self.at_bucket:
            self._leave(bucket)
            self.at_bucket = bucket
        if bucket > self.at_bucket - self.span:
            self.counts[item_id] = self.counts.get(item_id, 0.0) + weight
            self.total += weight

    def forget(self, bucket: int, dropped: Mapping[str, float]) -> None:
        """Counts dropped from a closed bucket (its weakest items) leave the window too."""
        if self.at_bucket is not None and bucket > self.at_bucket - self.span:
            self.total = _subtract(self.counts, self.total, dropped)

    def _leave(self, bucket: int) -> None:
        """Take out the buckets that leave the window when it moves from its bucket to
        ``bucket``."""
        assert self.at_bucket is not None
        for gone in range(self.at_bucket - self.span + 1,
                          min(bucket - self.span, self.at_bucket) + 1):
            self.total = _subtract(self.counts, self.total, self.buckets.get(gone, {}))


def _subtract(counts: dict[str, float], total: float, gone: Mapping[str, float]) -> float:
    for item, weight in gone.items():
        total -= weight
        left = counts.get(item, 0.0) - weight
        if left > 1e-9:
            counts[item] = left
        else:
            counts.pop(item, None)
    return max(total, 0.0)


@dataclass
class Trending:
    """What is popular now: interaction counts over sliding windows of the last 1, 3, 9 and
    27 days, read over the shortest that holds at least ``evidence`` interactions (a shop
    with thousands of events a day reads its last day; a slow stream, weeks, rather than
    noise). The windows end at the newest event read, not at the time asked: a user asked
    about after a quiet month gets what was trending when the stream last moved (``now``
    is taken for the same calls as :class:`Popularity`'s, and does not move them).
    Windows of up to 3 days count in hourly buckets, longer ones in daily buckets. Memory
    is bounded: when a bucket closes, only its ``bucket_items`` most interacted-with items
    are kept (what a top 50 is made of), so at most 72 hourly and 27 daily buckets of that
    many items, whatever the traffic, beside the open hour and day (every item touched in
    them)."""

    window_days: tuple[int, ...] = TRENDING_WINDOWS_DAYS
    evidence: float = TRENDING_EVIDENCE
    bucket_items: int = TRENDING_BUCKET_ITEMS
    windows: list[Window] = field(init=False)   # shortest first
    _newest: dict[int, int] = field(default_factory=dict)   # per resolution: newest bucket
    _version: int = 0
    _ranked: tuple[int, int, list[str]] | None = None   # (window days, version, top items)
    # per resolution: its buckets, its windows and their longest span (the per-event path)
    _groups: list[tuple[int, dict[int, dict[str, float]], list[Window], int]] = field(
        init=False, repr=False)

    def __post_init__(self) -> None:
        resolutions: dict[int, dict[int, dict[str, float]]] = {}
        self.windows = []
        for days in sorted(self.window_days):
            resolution = HOUR_MS if days <= 3 else DAY_MS
            self.windows.append(Window(days, resolution, resolutions.setdefault(resolution, {})))
        self._groups = [(resolution, buckets,
                         [w for w in self.windows if w.bucket_ms == resolution],
                         max(w.span for w in self.windows if w.bucket_ms == resolution))
                        for resolution, buckets in resolutions.items()]

    def add(self, item_id: str, weight: float, ts: int) -> None:
        for resolution, buckets, windows, longest in self._groups:
            at = ts // resolution
            newest = self._newest.get(resolution)
            if newest is not None and at <= newest - longest:
                continue   # older than every window of this resolution
            bucket = buckets.setdefault(at, {})
            bucket[item_id] = bucket.get(item_id, 0.0) + weight
            for window in windows:
                window.add(item_id, weight, at)
            if newest is None or at > newest:
                self._newest[resolution] = at
                if newest is not None:
                    self._close(buckets, newest, windows)
                for old in [b for b in buckets if b <= at - longest]:
                    del buckets[old]
        self._version += 1

    def _close(self, buckets: dict[int, dict[str, float]], closed: int,
               windows: Sequence[Window]) -> None:
        """Keep only the strongest ``bucket_items`` items of a bucket that has closed."""
        bucket = buckets.get(closed)
        if bucket is None or len(bucket) <= self.bucket_items:
            return
        kept = set(heapq.nlargest(self.bucket_items, bucket, key=bucket.__getitem__))
        dropped = {i: w for i, w in bucket.items() if i not in kept}
        buckets[closed] = {i: w for i, w in bucket.items() if i in kept}
        for window in windows:
            window.forget(closed, dropped)

    def horizon(self, now: int) -> Window:
        """The window read: the shortest with enough evidence (the longest when none
        has)."""
        del now   # (the windows end at the newest event)
        return next((w for w in self.windows if w.total >= self.evidence), self.windows[-1])

    def values(self, item_ids: Sequence[str], now: int) -> FloatArray:
        """The counts of ``item_ids`` in the window read (0 for others)."""
        counts = self.horizon(now).counts
        return np.fromiter(map(counts.get, item_ids, repeat(0.0, len(item_ids))),
                           dtype=np.float32, count=len(item_ids))

    def top(self, k: int, now: int) -> list[tuple[str, float]]:
        """The k items with the highest counts in the window read, highest first (the
        order is kept until the next event)."""
        window = self.horizon(now)
        counts = window.counts
        cached = self._ranked
        if (cached is None or cached[:2] != (window.days, self._version)
                or len(cached[2]) < min(k, len(counts))):
            ranked = heapq.nlargest(max(k, Popularity.TOP_KEPT), counts, key=counts.__getitem__)
            self._ranked = (window.days, self._version, ranked)
        else:
            ranked = cached[2]
        return [(i, counts[i]) for i in ranked[:k]]

    def fresh(self) -> Trending:
        """An empty one with the same windows (memory regrown from stored users)."""
        return Trending(self.window_days, self.evidence, self.bucket_items)


@dataclass(frozen=True)
class UserView:
    """What the recommender needs to know about a user."""

    interest: FloatArray | None
    recent: Sequence[tuple[str, str, float]]     # (item id, event type, weight), newest last
    purchased: AbstractSet[int]      # every item purchased, hashed (app.core.consumed)
    query: tuple[str, FloatArray] | None = None  # the last search, embedded
    segments: tuple[str, ...] = ()   # profile segments ("age:25-34", ...), when known
    consumed: bytes = b""            # every item consumed, hashed (app.core.consumed)
    behaviour: FloatArray | None = None  # the behaviour model's user vector, when served
    last_ts: int = 0                 # the user's last event (event time; 0: unknown)

    @cached_property
    def _consumed_sorted(self) -> npt.NDArray[np.uint32]:
        """Every consumed and purchased item's hash, sorted, once (purchases are consumed
        items too, unless the seen-set forgot them)."""
        hashed = np.frombuffer(self.consumed, dtype=np.dtype("<u4"))
        if self.purchased:
            hashed = np.concatenate([hashed, np.fromiter(self.purchased, dtype=hashed.dtype,
                                                         count=len(self.purchased))])
        out: npt.NDArray[np.uint32] = np.unique(hashed)
        return out

    @cached_property
    def _purchased_sorted(self) -> npt.NDArray[np.uint32]:
        return consumed.sorted_hashes(self.purchased)

    def excluded_sorted(self, request: Request) -> npt.NDArray[np.uint32]:
        """The sorted hashes of the items a list for ``request`` leaves out: every
        purchase, and every consumed item unless the request includes them (each list
        checks ~1,000 hashes against it at once: app.core.consumed.in_sorted)."""
        return self._consumed_sorted if request.exclude_seen else self._purchased_sorted


SEARCH_MANY_BYTES = 64 << 20   # at most this much of a batch's scores at once


@dataclass(frozen=True)
class Searched:
    """A user's query against every catalogue row (the encoder source's inner products),
    computed with the rest of a batch's in one matrix product (``Recommender.search_many``),
    for one version of the index."""

    version: int
    scores: FloatArray


def presence(last_ts: int, now: int, half_life_ms: int = AWAY_HALF_LIFE_MS) -> float:
    """How present a user is at ``now``: 1 while their last event is under AWAY_MIN_MS old
    (or unknown), then 2 ** (-away / half_life_ms)."""
    away = now - last_ts
    if not last_ts or away < AWAY_MIN_MS:
        return 1.0
    return float(2.0 ** (-away / half_life_ms))


@dataclass(frozen=True)
class Request:
    k: int = 10
    exclude: frozenset[str] = frozenset()
    exclude_seen: bool = True  # leave out what the user consumed (discovery, not reminders)
    allow_categories: frozenset[str] | None = None
    deny_categories: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Ranking:
    items: list[RecommendedItem]
    counts: dict[str, int]                 # candidates per source
    features: list[tuple[float, ...]]      # per item, in learning.FEATURES order
    # the top items had the behaviour model weighed each of these scales instead (asked
    # with ``Recommender.rank(alternatives=...)``; none without a model in the list)
    alternatives: dict[float, list[str]] = field(default_factory=dict)


def with_sources(params: RankerParams, sources: frozenset[str]) -> RankerParams:
    """Ranker parameters for an ablation: a switched-off source's score term is off too."""
    return replace(params,
                   semantic=params.semantic if "encoder" in sources else 0.0,
                   covisit=params.covisit if "covisit" in sources else 0.0,
                   sequence=params.sequence if "sequence" in sources else 0.0,
                   trending=params.trending if "trending" in sources else 0.0)


@dataclass
class Recommender:
    catalogue: Catalogue
    covisit: CoVisitation = field(default_factory=CoVisitation)
    popularity: Popularity = field(default_factory=Popularity)
    # the same counts over a short half-life: what is rising now (returning users)
    trending: Trending = field(default_factory=Trending)
    away_half_life_ms: int = AWAY_HALF_LIFE_MS
    params: RankerParams = field(default_factory=RankerParams)
    per_source: int = 100
    covisit_recent: int = 20       # the recent items whose neighbours are candidates
    covisit_neighbours: int = 100  # neighbours taken per recent item (docs/pipeline.md)
    sources: frozenset[str] = SOURCES  # candidate sources switched on (ablations)
    # what is popular per profile segment: the answer for new users whose profile is known
    segment_popularity: dict[str, Popularity] = field(default_factory=dict)
    new_user_events: int = 5       # fewer recent items than this: a new user
    # the served behaviour model's item side (None: no model, the ranker as before)
    behaviour: ItemSpace | None = None
    # each recent search query's nearest items, for the catalogue version they were found in
    _query_cache: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _query_version: int = field(default=-1, repr=False)

    def learn_segments(self, segments: Sequence[str], item_id: str, weight: float,
                       ts: int) -> None:
        for segment in segments:
            self.segment_popularity.setdefault(
                segment, Popularity(half_life_ms=self.popularity.half_life_ms)
            ).add(item_id, weight, ts)

    def _new_with_profile(self, user: UserView) -> bool:
        """A new user (few recent items) whose profile segments are known."""
        return len(user.recent) < self.new_user_events and bool(user.segments)

    def _segment_values(self, user: UserView, ids: list[str], now: int) -> FloatArray:
        total = np.zeros(len(ids), dtype=np.float32)
        for segment in user.segments:
            if segment in self.segment_popularity:
                total += self.segment_popularity[segment].values(ids, now)
        return total

    def _popularity(self, user: UserView, ids: list[str], now: int, new_user: bool
                    ) -> FloatArray:
        """Global popularity; for a new user with a known profile, their segments' first:
        segment popularity plus half the overall one, each scaled to [0, 1]."""
        overall = self.popularity.values(ids, now)
        if not new_user:
            return overall
        segment = self._segment_values(user, ids, now)
        blended: FloatArray = (0.5 * overall / max(float(overall.max(initial=0.0)), 1e-9)
                               + segment / max(float(segment.max(initial=0.0)), 1e-9))
        return blended.astype(np.float32)

    def _query(self, user: UserView, params: RankerParams) -> FloatArray | None:
        """What the encoder source searches with: the user's interest through the ranker's
        user projection W1 (items are indexed as they are: W2 must be the identity for the
        search to match the score); None without an interest or the source."""
        if user.interest is None or "encoder" not in self.sources:
            return None
        if params.w1 is None and params.b1 is None:
            return user.interest
        projected: FloatArray = project(user.interest[None, :], params.w1, params.b1)[0]
        return projected

    def search_many(self, users: Sequence[UserView], params: Sequence[RankerParams | None]
                    ) -> list[Searched | None]:
        """The encoder source's inner products for each of ``users`` (with their ``params``,
        None: the recommender's own), in one matrix product for them all: pass each to
        ``rank`` as ``searched``. None for a user without a query, when the index is
        approximate, and beyond SEARCH_MANY_BYTES of scores (a batch's share of a large
        catalogue)."""
        index = self.catalogue.index
        room = max(1, SEARCH_MANY_BYTES // (4 * max(index.rows, 1)))
        queries = {n: q for n, (u, p) in enumerate(zip(users, params, strict=True))
                   if (q := self._query(u, p or self.params)) is not None}
        asked = list(queries)[:room]   # (the rest search one by one)
        out: list[Searched | None] = [None] * len(users)
        scores = index.scores_many(np.stack([queries[n] for n in asked])) if asked else None
        if scores is not None:
            for row, n in enumerate(asked):
                out[n] = Searched(index.version, scores[row])
        return out

    def candidates(self, user: UserView, request: Request, now: int,
                   params: RankerParams | None = None, searched: Searched | None = None
                   ) -> tuple[Candidates, dict[str, int]]:
        """The union of every source's candidates, with their features; plus how many each
        source proposed (a metric). The encoder's are the items nearest the user's interest
        through the ranker's user projection W1 (``_query``; ``searched``: its inner product
        with every item, when computed with a batch's)."""
        params = params or self.params
        blocked = self._blocked(user, request)
        excluded = user.excluded_sorted(request)
        # consumed items are dropped from each source's list: ask each for that many more
        # (up to CONSUMED_MARGIN lists' worth), so a long history does not thin the lists
        extra = min(len(excluded), CONSUMED_MARGIN * self.per_source)
        index = self.catalogue.index
        found: dict[str, int | None] = {}   # candidate -> its index row, in the order found
        counts = {"encoder": 0, "covisit": 0, "popular": 0, "sequence": 0, "trending": 0}
        # (without the trending source the ranker is blind to time away: the ablation)
        present = presence(user.last_ts, now, self.away_half_life_ms) \
            if "trending" in self.sources else 1.0
        lift = self._behaviour_lift(user)
        if lift is not None and self.behaviour is not None:
            ranked = self.behaviour.top(lift, self.per_source + extra + len(blocked))
            for item in _unconsumed(excluded, [i for i in ranked if i not in blocked]
                                    )[:self.per_source]:
                found[item] = index.row(item)
                counts["sequence"] += 1
        query = self._query(user, params)
        if query is not None:
            known = searched.scores if searched is not None \
                and searched.version == index.version else None
            rows = index.search_rows(query, self.per_source + extra, blocked, known)
            if len(excluded):
                rows = rows[~consumed.in_sorted(excluded, index.hashes_at(rows))]
            rows = rows[:self.per_source]
            for item, row in zip(index.ids_at(rows.tolist()), rows.tolist(), strict=True):
                found[item] = row
            counts["encoder"] += len(rows)
        if user.query is not None and "encoder" in self.sources:
            for item in self._query_hits(user.query, self.per_source // 4, blocked):
                found[item] = index.row(item)
        recent = user.recent[-self.covisit_recent:]
        co = self.covisit.candidates(((i, w) for i, _, w in recent), self.covisit_neighbours) \
            if "covisit" in self.sources else None
        if co is not None:
            targets = co.ranked_ids(self.per_source + extra)
            if len(excluded):
                targets = targets[~consumed.in_sorted(excluded, co.hashes_of(targets))]
            for item in co.names_of(targets[:self.per_source]):
                if (row := index.row(item)) is not None:   # (in the catalogue)
                    found[item] = row
                    counts["covisit"] += 1
        # (never past the kept top: a longer top sorts the whole catalogue)
        wanted = self.per_source // 2
        popular = _first_unconsumed(excluded, self.popularity.ranked(
            min(wanted + extra, max(Popularity.TOP_KEPT, wanted))), wanted) \
            if "popular" in self.sources else []
        new_user = self._new_with_profile(user)
        if new_user and "popular" in self.sources:
            for segment in user.segments:
                if segment in self.segment_popularity:
                    popular = _unconsumed(excluded, [
                        item for item, _ in self.segment_popularity[segment].top(
                            self.per_source // 4, now)]) + popular
        for item in popular:
            if item not in found and (row := index.row(item)) is not None:
                found[item] = row
                counts["popular"] += 1
        trending = present < 1.0
        if trending:   # only for a user who is away: nothing else changes for the others
            rising = [item for item, _ in self.trending.top(
                min(wanted + extra, max(Popularity.TOP_KEPT, wanted)), now)]
            for item in _unconsumed(excluded, rising)[:wanted]:
                if item not in found and (row := index.row(item)) is not None:
                    found[item] = row
                    counts["trending"] += 1
        if None in found.values():   # (a behaviour model's item the catalogue dropped)
            found = {item: row for item, row in found.items() if row is not None}
        ids = list(found)
        rows = np.fromiter(found.values(), dtype=np.int64, count=len(found))
        no_sources: list[str | None] = [None] * len(ids)
        interned = self.covisit.interned(ids) if co is not None else None
        covisit, covisit_source = co.lookup(ids, interned) if co is not None else (
            np.zeros(len(ids)), no_sources)
        added = self.catalogue.added_at(rows)
        recent_items = [item for item, _, _ in reversed(user.recent)]   # newest first
        newest = recent_items[:RECENT_FEATURES]
        newest += [""] * (RECENT_FEATURES - len(newest))   # (no such item: no edges)
        candidates = Candidates(
            item_ids=ids,
            vectors=index.at_rows(rows) if ids else
            np.zeros((0, self.catalogue.dimension), dtype=np.float32),
            covisit=covisit.astype(np.float32),
            covisit_source=covisit_source,
            popularity=self._popularity(user, ids, now, new_user),
            freshness=np.exp2(-np.maximum(now - added, 0.0) / FRESHNESS_HALF_LIFE_MS
                              ).astype(np.float32),
            categories=self.catalogue.categories_at(rows.tolist()),
            covisit_recent=self.covisit.strengths(newest, ids, interned).astype(np.float32)
            if co is not None else None,
            covisit_lift=self.covisit.lift(recent_items, ids, interned).astype(np.float32)
            if co is not None else None,
            sequence=self.behaviour.lookup(lift, ids, scaled=False)
            if lift is not None and self.behaviour is not None else None,
            sequence_scale=self.behaviour.scale if self.behaviour is not None else 1.0,
            trending=self.trending.values(ids, now) if trending else None,
            presence=present,
            rows=rows,
        )
        return candidates, counts

    def _behaviour_lift(self, user: UserView) -> FloatArray | None:
        """The model's log-lift of every catalogue item for the user (None without a model,
        a user vector, or the source)."""
        space = self.behaviour
        if space is None or user.behaviour is None or "sequence" not in self.sources:
            return None
        index = self.catalogue.index
        space.sync(index.version, list(self.catalogue.items), index.vector)
        lift: FloatArray = space.log_lift(user.behaviour[None, :])[0]
        return lift

    def _query_hits(self, query: tuple[str, FloatArray], k: int, blocked: set[str]
                    ) -> list[str]:
        """The k items nearest a search query, leaving out ``blocked``. A query's nearest
        items depend only on the catalogue, and a search steers a user's lists for a day:
        its top k + QUERY_MARGIN are kept per query until the catalogue changes, and the
        blocked ones are dropped from them (the same k as a search that excludes them,
        unless more than the margin are blocked: then it searches)."""
        index = self.catalogue.index
        if self._query_version != index.version:
            self._query_cache.clear()
            self._query_version = index.version
        text, vector = query
        ranked = self._query_cache.pop(text, None)
        if ranked is None:
            ranked = [item for item, _ in index.search(vector, k + QUERY_MARGIN)]
            if len(self._query_cache) >= QUERY_CACHE_SIZE:
                del self._query_cache[next(iter(self._query_cache))]
        self._query_cache[text] = ranked   # (re)inserted last: the oldest goes first
        hits = [item for item in ranked if item not in blocked][:k]
        if len(hits) < k and len(ranked) == k + QUERY_MARGIN:
            hits = [item for item, _ in index.search(vector, k, blocked)]
        return hits

    def recommend(self, user: UserView, request: Request, now: int,
                  params: RankerParams | None = None, searched: Searched | None = None
                  ) -> tuple[list[RecommendedItem], dict[str, int]]:
        ranking = self.rank(user, request, now, params, searched=searched)
        return ranking.items, ranking.counts

    def rank(self, user: UserView, request: Request, now: int,
             params: RankerParams | None = None, extra: int = 0,
             searched: Searched | None = None, alternatives: Sequence[float] = (),
             alternatives_k: int = 10) -> Ranking:
        """The top ``request.k`` items (``extra`` more ranked below them, for exploration),
        scored with ``params`` (the recommender's own when None), explained, with each
        item's unweighted ranker features (what a learner fits). ``searched``: the encoder
        source's inner products for ``user`` and ``params``, when computed with a batch's
        (``search_many``). ``alternatives``: scales of the behaviour model's feature whose
        top ``alternatives_k`` items (at most ``request.k``) are ranked too
        (``Ranking.alternatives``: the same candidates and filters, only the model's weight
        differs; MMR's first picks do not depend on how many it makes)."""
        params = params or self.params
        candidates, counts = self.candidates(user, request, now, params, searched)
        if not candidates.item_ids:
            return Ranking([], counts, [])
        # (out of stock: not live in the index)
        keep = allowed(candidates, self._blocked(user, request),
                       set(request.allow_categories) if request.allow_categories else None,
                       set(request.deny_categories)) \
            & self.catalogue.index.live_at(self._rows(candidates)) \
            & ~self._consumed(user, request, candidates)
        scored = score(user.interest, candidates, params)
        relevance = np.where(keep, scored.total, -np.inf).astype(np.float32)
        rows = [r for r in mmr(relevance, candidates.vectors, request.k + extra,
                               params.mmr_lambda)
                if np.isfinite(relevance[r])]
        kinds = {item: kind for item, kind, _ in user.recent}
        new_user = self._new_with_profile(user)
        history = [(i, self.catalogue.index.vector(i)) for i, _, _ in user.recent[-20:]
                   if i in self.catalogue.index]
        segment = (self._segment_values(user, [candidates.item_ids[r] for r in rows], now)
                   if new_user else np.zeros(len(rows), dtype=np.float32))
        because = self.behaviour.nearest(
            [candidates.item_ids[r] for r in rows], [i for i, _, _ in user.recent[-20:]]) \
            if self.behaviour is not None and candidates.sequence is not None else None
        whys = explain(rows, candidates, scored,
                       [(i, v) for i, v in history if v is not None], user.query, because)
        out = [RecommendedItem(
            item_id=candidates.item_ids[row], rank=rank, score=float(scored.total[row]),
            explanation=self._explanation(why, kinds, bool(segment[rank - 1] > 0)))
            for rank, (row, why) in enumerate(zip(rows, whys, strict=True), start=1)]
        features = [tuple(row) for row in features_of(scored, rows).tolist()]
        other: dict[float, list[str]] = {}
        if candidates.sequence is not None and alternatives:
            depth = min(alternatives_k, request.k)
            # the served scale's own top items are the list's first (MMR's first picks
            # do not depend on how many it makes); the others ranked together
            served = candidates.sequence_scale
            rescaled = [scale for scale in alternatives if scale != served]
            totals = at_scales(scored, candidates, params, rescaled)
            picked = mmr_many(np.where(keep[None, :], totals, -np.inf).astype(np.float32),
                              candidates.vectors, depth, params.mmr_lambda)
            found = dict(zip(rescaled, picked, strict=True))
            other = {scale: [candidates.item_ids[r] for r in found.get(scale, rows[:depth])]
                     for scale in alternatives}
        return Ranking(out, counts, features, other)

    def candidate_features(self, user: UserView, request: Request, now: int, item: str
                           ) -> tuple[npt.NDArray[np.float64], int] | None:
        """The unweighted ranker features (FEATURES order) of the candidates a list for
        ``user`` would be chosen from, and the row of ``item`` among them; None when
        ``item`` is not a candidate (what the ranker learns from the user's next item)."""
        candidates, _ = self.candidates(user, request, now)
        if item not in candidates.item_ids:
            return None
        keep = allowed(candidates, self._blocked(user, request), None, set()) \
            & ~self._consumed(user, request, candidates)
        at = candidates.item_ids.index(item)
        if not keep[at]:
            return None   # an item the list leaves out (seen, bought): nothing to rank
        rows = np.flatnonzero(keep)
        scored = score(user.interest, candidates, self.params)
        return features_of(scored, rows.tolist()), int(np.searchsorted(rows, at))

    @staticmethod
    def _rows(candidates: Candidates) -> npt.NDArray[np.int64]:
        """The candidates' index rows (``candidates`` always records them)."""
        assert candidates.rows is not None
        return candidates.rows

    def _consumed(self, user: UserView, request: Request, candidates: Candidates
                  ) -> npt.NDArray[np.bool_]:
        """Which candidates the list leaves out as consumed (or purchased)."""
        excluded = user.excluded_sorted(request)
        if not len(excluded):
            return np.zeros(len(candidates.item_ids), dtype=bool)
        return consumed.in_sorted(excluded,
                                  self.catalogue.index.hashes_at(self._rows(candidates)))

    @staticmethod
    def _blocked(user: UserView, request: Request) -> set[str]:
        blocked = set(request.exclude)
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
            if why.kind == "sequence":   # the behaviour model's pick, by its nearest cause
                return Explanation(kind="history",
                                   text=f"because you {verb} {title}: what people with "
                                        "histories like yours chose next",
                                   item_id=why.item_id)
            return Explanation(kind="history", text=f"because you {verb} {title}",
                               item_id=why.item_id)
        if why.kind == "trending":
            return Explanation(kind="popular", text="trending since your last visit")
        if segment_popular:
            return Explanation(kind="popular", text="popular with people like you")
        return Explanation(kind="popular", text="popular right now")


def _unconsumed(excluded: npt.NDArray[np.uint32], item_ids: list[str]) -> list[str]:
    """``item_ids`` less those whose hash is in ``excluded`` (``UserView.excluded_sorted``),
    in order."""
    if not len(excluded) or not item_ids:
        return item_ids
    out = consumed.in_sorted(excluded, consumed.hashes(item_ids))
    return [i for i, left in zip(item_ids, out.tolist(), strict=True) if not left]


def _first_unconsumed(excluded: npt.NDArray[np.uint32], item_ids: list[str], k: int
                      ) -> list[str]:
    """``_unconsumed(excluded, item_ids)[:k]``, reading no further into ``item_ids`` than
    it takes (in stretches that double)."""
    found: list[str] = []
    start, stretch = 0, 2 * k
    while len(found) < k and start < len(item_ids):
        found += _unconsumed(excluded, item_ids[start:start + stretch])
        start, stretch = start + stretch, 2 * stretch
    return found[:k]
