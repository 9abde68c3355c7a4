"""Top-K quality of ranked lists against one held-out target per user.

Every function is pure and takes plain lists; the evaluation protocol (which list, which
target, what is excluded) lives in :mod:`app.evaluation.report`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def rank_of(ranked: Sequence[str], target: str) -> int | None:
    """1-based position of ``target`` in ``ranked``, or None."""
    for position, item in enumerate(ranked, start=1):
        if item == target:
            return position
    return None


def ndcg_at(rank: int | None, k: int) -> float:
    """NDCG@k with a single relevant item: 1/log2(rank + 1) inside the top k."""
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def hit_at(rank: int | None, k: int) -> float:
    return 1.0 if rank is not None and rank <= k else 0.0


def reciprocal_rank(rank: int | None) -> float:
    return 1.0 / rank if rank is not None else 0.0


def jaccard_distance(a: Sequence[str], b: Sequence[str]) -> float:
    sa, sb = set(a), set(b)
    union = sa | sb
    return 1.0 - len(sa & sb) / len(union) if union else 0.0


def intra_list_diversity(ranked: Sequence[str], features: Mapping[str, Sequence[str]]) -> float:
    """Mean pairwise Jaccard distance of the items' features (genres) within one list."""
    pairs = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:]]
    if not pairs:
        return 0.0
    return float(np.mean([jaccard_distance(features.get(a, ()), features.get(b, ()))
                          for a, b in pairs]))


def self_information(item: str, counts: Mapping[str, int], users: int) -> float:
    """-log2 of the share of users who interacted with ``item`` (add-one smoothed)."""
    return -math.log2((counts.get(item, 0) + 1) / (users + 1))


@dataclass(frozen=True)
class Scores:
    users: int
    hr10: float
    ndcg10: float
    hr50: float
    mrr: float
    precision10: float
    coverage10: float
    diversity10: float
    novelty10: float

    def row(self) -> dict[str, float]:
        return {
            "HR@10": self.hr10, "NDCG@10": self.ndcg10, "HR@50": self.hr50, "MRR": self.mrr,
            "P@10": self.precision10, "coverage@10": self.coverage10,
            "ILD@10": self.diversity10, "novelty@10": self.novelty10,
        }


def evaluate(lists: Mapping[str, Sequence[str]], targets: Mapping[str, str],
             catalogue_size: int, features: Mapping[str, Sequence[str]],
             counts: Mapping[str, int], users_in_train: int) -> Scores:
    """Scores of per-user ranked ``lists`` (history already excluded) against ``targets``.
    A user without a list counts as a miss. Recall@10 equals HR@10 with one target;
    precision@10 is HR@10 / 10; MRR is over the whole list given (up to 50 here)."""
    ranks = [rank_of(lists.get(user, ()), target) for user, target in targets.items()]
    tops = [list(lists.get(user, ()))[:10] for user in targets]
    shown = {item for top in tops for item in top}
    n = max(1, len(targets))
    return Scores(
        users=len(targets),
        hr10=sum(hit_at(r, 10) for r in ranks) / n,
        ndcg10=sum(ndcg_at(r, 10) for r in ranks) / n,
        hr50=sum(hit_at(r, 50) for r in ranks) / n,
        mrr=sum(reciprocal_rank(r) for r in ranks) / n,
        precision10=sum(hit_at(r, 10) for r in ranks) / n / 10,
        coverage10=len(shown) / max(1, catalogue_size),
        diversity10=float(np.mean([intra_list_diversity(t, features) for t in tops if t]))
        if any(tops) else 0.0,
        novelty10=float(np.mean([self_information(i, counts, users_in_train)
                                 for t in tops for i in t])) if any(tops) else 0.0,
    )
