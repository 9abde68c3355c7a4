"""Scoring, filtering, diversity re-ranking and explanations, over numpy arrays.

The semantic score is the design's s = cos(W1 u + b1, W2 r + b2), u the user's interest and
r an item vector; with no learnt projections W1 = W2 = I and b1 = b2 = 0 (the defaults), it
is plain cosine. A small linear ranker adds co-visitation, popularity and freshness; its
weights are versioned data (:class:`RankerParams`), learnt online from behaviour and
feedback (app.core.learning). Beside the recency-weighted co-visitation sum, the ranker
sees the co-visitation strength from each of the user's ``RECENT_FEATURES`` newest items on
its own (log-scaled: a weighted sum of logs favours items that several recent items point
to), the log of popularity (which may weigh negatively: a discount of the blockbusters every
list would otherwise hold), and the *lift* of the co-visitation from all of the user's
recent items (each edge divided by the visits of both its ends: what co-visitation says
beyond popularity; app.core.covisit). The documented defaults (version ``default-4``) weigh
the per-item strengths and the lift about as the online learner came to weigh them on the
MovieLens-1M replay, chosen in the in-process stand-in (docs/pipeline.md), so a ranker that
has learnt nothing does not start without them; log popularity and novelty stay 0. Maximal
marginal relevance then trades relevance for diversity, and every pick is explained by the
signal that contributed most.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
RECENT_FEATURES = 5   # co-visitation strength from each of the newest items, as a feature
COVISIT_RECENT = tuple(f"covisit_{n}" for n in range(1, RECENT_FEATURES + 1))
# what weights scale
FEATURES = ("semantic", "covisit", "popularity", "freshness", "novelty", *COVISIT_RECENT,
            "log_popularity", "covisit_lift", "sequence", "trending")
# what the user's own history says: discounted by their presence (how recently they were
# here), so that a user back after weeks away is not served what their old history alone
# predicts (trending, weighed by their absence, takes its place)
HISTORY_FEATURES = frozenset({"semantic", "covisit", *COVISIT_RECENT, "covisit_lift",
                              "sequence"})
SIGNED = frozenset({"log_popularity"})   # may weigh negatively; the others only help


@dataclass(frozen=True)
class RankerParams:
    """Versioned ranker parameters. Documented defaults until the learner tunes them."""

    # 3: the learnt per-item strengths and lift (docs/pipeline.md); 4: the behaviour model's
    # weight 0.3 -> 1.25 (a sweep on validation targets, BENCHMARKS.md "Behaviour model")
    version: str = "default-4"
    semantic: float = 1.0
    covisit: float = 1.0
    popularity: float = 0.05
    freshness: float = 0.05
    novelty: float = 0.0
    covisit_1: float = 1.0   # log(1 + co-visitation strength from the newest item) ...
    covisit_2: float = 0.5
    covisit_3: float = 0.4
    covisit_4: float = 0.3
    covisit_5: float = 0.2   # ... from the fifth newest
    log_popularity: float = 0.0
    covisit_lift: float = 2.0  # the lift of co-visitation from every recent item, scaled
    sequence: float = 1.25   # the behaviour model's log-lift (0 without a model served)
    trending: float = 8.0    # what is rising now (scaled), times the user's absence
    mmr_lambda: float = 0.95
    w1: FloatArray | None = None
    b1: FloatArray | None = None
    w2: FloatArray | None = None
    b2: FloatArray | None = None


def project(x: FloatArray, w: FloatArray | None, b: FloatArray | None) -> FloatArray:
    """Rows of ``x`` through W x + b, then to unit length (identity when W, b are None)."""
    y = x if w is None else x @ w.T
    if b is not None:
        y = y + b
    norms = np.linalg.norm(y, axis=-1, keepdims=True)
    unit: FloatArray = (y / np.clip(norms, 1e-12, None)).astype(np.float32)
    return unit


def _scaled(values: FloatArray) -> FloatArray:
    """Divide by the maximum so a feature lies in [0, 1] within one request."""
    top = float(values.max()) if values.size else 0.0
    scaled: FloatArray = (values / top).astype(np.float32) if top > 0 else values
    return scaled


@dataclass(frozen=True)
class Candidates:
    """Aligned arrays describing the candidate items of one request."""

    item_ids: list[str]
    vectors: FloatArray                      # [n, d], unit rows
    covisit: FloatArray                      # [n], summed co-visitation score, 0 if none
    covisit_source: list[str | None]         # recent item behind the co-visitation score
    popularity: FloatArray                   # [n], decayed interaction count
    freshness: FloatArray                    # [n], 1 for a brand-new item, decaying to 0
    categories: list[str] = field(default_factory=list)
    # [n, RECENT_FEATURES]: the stored co-visitation strength from each of the user's
    # newest items (newest first; 0 without an edge or such an item); None: all 0
    covisit_recent: FloatArray | None = None
    # [n]: the summed lift of the co-visitation from all the user's recent items; None: 0
    covisit_lift: FloatArray | None = None
    # [n]: the behaviour model's log(N * p(item)) (app.core.behaviour); None: no model, 0
    sequence: FloatArray | None = None
    # what ``sequence`` is multiplied by in the feature: the served model's scale (its
    # weight in the ranker, app.core.weighing)
    sequence_scale: float = 1.0
    # [n]: what is trending (recommender.Trending: counts over a sliding window chosen by
    # the evidence it holds); None: 0
    trending: FloatArray | None = None
    # the user's presence: 1 when their last event is now, halving with every
    # recommender.AWAY_HALF_LIFE_MS they have been away since (the history features are
    # scaled by it, the trending feature by 1 - presence, their absence)
    presence: float = 1.0
    # [n]: each candidate's row in the catalogue's index, when known (Recommender)
    rows: npt.NDArray[np.int64] | None = None


@dataclass(frozen=True)
class Scored:
    total: FloatArray
    semantic: FloatArray
    parts: dict[str, FloatArray]      # each feature times its weight: what the total sums
    features: dict[str, FloatArray]   # the same features unweighted (what a learner fits)


def score(user: FloatArray | None, candidates: Candidates, params: RankerParams) -> Scored:
    """The ranker's score of every candidate, with each weighted part kept for explanations."""
    n = len(candidates.item_ids)
    if user is None:
        semantic = np.zeros(n, dtype=np.float32)
    else:
        u = project(user[None, :], params.w1, params.b1)[0]
        items = candidates.vectors if params.w2 is None and params.b2 is None else project(
            candidates.vectors, params.w2, params.b2)   # (item vectors are unit rows)
        semantic = (items @ u).astype(np.float32)
    popularity = _scaled(candidates.popularity)
    recent = (np.log1p(candidates.covisit_recent).astype(np.float32)
              if candidates.covisit_recent is not None
              else np.zeros((n, RECENT_FEATURES), dtype=np.float32))
    features = {
        "semantic": semantic,
        "covisit": _scaled(candidates.covisit),
        "popularity": popularity,
        "freshness": candidates.freshness,
        "novelty": (1.0 - popularity).astype(np.float32),
        **{name: recent[:, column] for column, name in enumerate(COVISIT_RECENT)},
        "log_popularity": np.log1p(candidates.popularity).astype(np.float32),
        "covisit_lift": _scaled(candidates.covisit_lift) if candidates.covisit_lift is not None
        else np.zeros(n, dtype=np.float32),
        "sequence": _times(candidates.sequence, candidates.sequence_scale)
        if candidates.sequence is not None else np.zeros(n, dtype=np.float32),
        "trending": (_scaled(candidates.trending) * np.float32(1.0 - candidates.presence)
                     if candidates.trending is not None and candidates.presence < 1.0
                     else np.zeros(n, dtype=np.float32)),
    }
    if candidates.presence < 1.0:
        presence = np.float32(candidates.presence)
        for name in HISTORY_FEATURES:
            features[name] = features[name] * presence
    weights = {name: float(getattr(params, name)) for name in FEATURES}
    parts = {name: weights[name] * value for name, value in features.items()}
    total = np.stack(list(parts.values())).sum(axis=0).astype(np.float32)
    return Scored(total, semantic, parts, features)


def _times(values: FloatArray, scale: float) -> FloatArray:
    return values * np.float32(scale) if scale != 1.0 else values


def at_scales(scored: Scored, candidates: Candidates, params: RankerParams,
              scales: Sequence[float]) -> FloatArray:
    """``scored``'s totals (one row per scale) had the behaviour model's feature been
    multiplied by each of ``scales`` instead of ``candidates.sequence_scale``, the rest of
    the score unchanged (``candidates`` carry the model's feature)."""
    assert candidates.sequence is not None
    presence = np.float32(candidates.presence) if candidates.presence < 1.0 \
        else np.float32(1.0)
    other = scored.total - scored.parts["sequence"]
    weights = np.array([params.sequence * scale for scale in scales], dtype=np.float32)
    rescaled: FloatArray = (other[None, :] + (weights * presence)[:, None]
                            * candidates.sequence[None, :]).astype(np.float32)
    return rescaled


def allowed(candidates: Candidates, blocked: set[str], allow_categories: set[str] | None,
            deny_categories: set[str]) -> npt.NDArray[np.bool_]:
    """Mask of candidates that survive the filters: not blocked (purchased, out of stock,
    excluded by the request) and within the category rules."""
    keep = np.array([item not in blocked for item in candidates.item_ids], dtype=bool)
    if candidates.categories and (allow_categories is not None or deny_categories):
        for i, category in enumerate(candidates.categories):
            if category in deny_categories or (
                allow_categories is not None and category not in allow_categories
            ):
                keep[i] = False
    return keep


def mmr(relevance: FloatArray, vectors: FloatArray, k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: repeatedly take the item maximising
    lam * relevance - (1 - lam) * (its highest cosine to anything already taken).

    Only candidates that can win a round take part: while fewer than k are taken, one of
    the k most relevant is still there, worth at least lam * (k-th relevance) - (1 - lam);
    a candidate worth at most lam * relevance + (1 - lam) below that never wins (cosines
    lie in [-1, 1]). The picks are the same; the loop runs over tens of rows, not
    hundreds."""
    n = len(relevance)
    if n == 0 or k <= 0:
        return []
    finite = np.flatnonzero(np.isfinite(relevance))
    if 0.0 < lam <= 1.0 and len(finite) > k:
        kth = np.partition(relevance[finite], len(finite) - k)[len(finite) - k]
        floor = kth - 2.0 * (1.0 - lam) / lam - 1e-6
        contenders = finite[relevance[finite] >= floor]   # ascending: ties keep their order
        picks = _mmr(relevance[contenders], vectors[contenders], k, lam)
        return [int(contenders[p]) for p in picks]
    return _mmr(relevance, vectors, k, lam)


def mmr_many(relevance: FloatArray, vectors: FloatArray, k: int, lam: float
             ) -> list[list[int]]:
    """``mmr`` of each row of ``relevance`` (the same candidates ranked by several
    relevances), the rows' rounds taken together: one matrix product a round for every
    row, over the union of the rows' contenders (a candidate that cannot win a round for
    one row does not win it there when present: each row's picks are its own ``mmr``'s,
    up to float rounding in the cosines)."""
    rows, n = relevance.shape
    if n == 0 or k <= 0 or rows == 0:
        return [[] for _ in range(rows)]
    finite = np.isfinite(relevance)
    wanted = finite.any(axis=0)
    if 0.0 < lam <= 1.0:
        margin = 2.0 * (1.0 - lam) / lam + 1e-6
        wanted = np.zeros(n, dtype=bool)
        for row in range(rows):
            scores = relevance[row]
            kept = np.flatnonzero(finite[row])
            if len(kept) > k:
                kth = np.partition(scores[kept], len(kept) - k)[len(kept) - k]
                kept = kept[scores[kept] >= kth - margin]
            wanted[kept] = True
    columns = np.flatnonzero(wanted)
    if not len(columns):
        return [[] for _ in range(rows)]
    weighed = lam * relevance[:, columns]
    near = vectors[columns]
    steps = min(k, len(columns))
    closest = np.full(weighed.shape, -np.inf, dtype=np.float32)
    available = np.ones(weighed.shape, dtype=bool)
    picks = np.full((rows, steps), -1, dtype=np.int64)
    live = np.ones(rows, dtype=bool)
    every = np.arange(rows)
    for step in range(steps):
        redundancy = np.where(np.isfinite(closest), closest, 0.0)
        value = np.where(available, weighed - (1.0 - lam) * redundancy, -np.inf)
        pick = value.argmax(axis=1)
        live &= np.isfinite(value[every, pick])
        if not live.any():
            break
        picks[live, step] = pick[live]
        available[every, pick] = False
        closest = np.maximum(closest, (near @ near[pick].T).T)
    return [[int(columns[p]) for p in row if p >= 0] for row in picks]


def _mmr(relevance: FloatArray, vectors: FloatArray, k: int, lam: float) -> list[int]:
    n = len(relevance)
    chosen: list[int] = []
    closest = np.full(n, -np.inf, dtype=np.float32)
    available = np.ones(n, dtype=bool)
    weighed = lam * relevance
    for _ in range(min(k, n)):
        redundancy = np.where(np.isfinite(closest), closest, 0.0)
        value = np.where(available, weighed - (1.0 - lam) * redundancy, -np.inf)
        pick = int(value.argmax())
        if not np.isfinite(value[pick]):
            break  # everything left is filtered out (or taken)
        chosen.append(pick)
        available[pick] = False
        closest = np.maximum(closest, vectors @ vectors[pick])
    return chosen


@dataclass(frozen=True)
class Why:
    kind: str          # history, search, covisit, sequence, popular, trending
    item_id: str | None = None
    query: str | None = None


def explain(rows: Sequence[int], candidates: Candidates, scored: Scored,
            history: Sequence[tuple[str, FloatArray]], query: tuple[str, FloatArray] | None,
            sequence_because: Sequence[str | None] | None = None) -> list[Why]:
    """Name, for each candidate of ``rows``, the signal that contributed most: the
    co-visited recent item, else the history item or search query most similar to it, else
    (the behaviour model's pick) ``sequence_because``'s item for that row, else popularity.
    One matrix product for all rows (history x candidates), not one per pair."""
    if not rows:
        return []
    index = np.asarray(rows, dtype=np.intp)
    names = list(scored.parts)
    parts = np.stack([scored.parts[name][index] for name in names], axis=1)
    strongest = parts.argmax(axis=1)
    covisit_part = sum((scored.parts[name][index] for name in names
                        if name.startswith("covisit")), np.zeros(len(index)))
    vectors = candidates.vectors[index]
    if history:
        similarity = vectors @ np.stack([vector for _, vector in history]).T
        best, best_similarity = similarity.argmax(axis=1), similarity.max(axis=1)
    query_similarity = vectors @ query[1] if query is not None else None
    out: list[Why] = []
    for n, row in enumerate(rows):
        source = candidates.covisit_source[row]
        name = names[int(strongest[n])]
        if name.startswith("covisit") and source is not None:
            out.append(Why("covisit", item_id=source))
            continue
        if name == "semantic" and (history or query is not None):
            item_similarity = float(best_similarity[n]) if history else -np.inf
            if query is not None and query_similarity is not None and float(
                    query_similarity[n]) >= item_similarity:
                out.append(Why("search", query=query[0]))
                continue
            if history:
                out.append(Why("history", item_id=history[int(best[n])][0]))
                continue
        if name == "sequence" and sequence_because is not None \
                and sequence_because[n] is not None:
            out.append(Why("sequence", item_id=sequence_because[n]))
            continue
        if name == "trending":
            out.append(Why("trending"))
        elif source is not None and covisit_part[n] > 0:
            out.append(Why("covisit", item_id=source))
        else:
            out.append(Why("popular"))
    return out
