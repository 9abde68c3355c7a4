"""Offline baselines on the replay's split, computed in the same run as the replay.

They train on exactly the stream the pipeline saw (every rating but each user's target) and
rank every item for every user, excluding the user's history, as the protocol asks:

- popularity: items by interaction count;
- co-visitation alone: StreamRec's own :class:`CoVisitation` fed the stream in time order,
  candidates from the user's last items (newer ones weigh more), popularity to fill; each
  list is taken when the pipeline's would be (it knows only the past);
- implicit ALS (Hu, Koren, Volinsky 2008) in numpy: binary preferences, confidence
  1 + alpha, alternating exact least squares.

Popularity and ALS see the whole stream at once, including other users' later ratings:
leave-last-out is not chronological across users.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from app.core.covisit import CoVisitation
from app.evaluation.split import Split

Lists = dict[str, list[str]]
FloatArray = npt.NDArray[np.float32]


def first_unseen(ranked: Sequence[str], seen: set[str], k: int) -> list[str]:
    out: list[str] = []
    for item in ranked:
        if item not in seen:
            out.append(item)
            if len(out) == k:
                break
    return out


def popularity(split: Split, k: int = 50) -> Lists:
    counts = split.train_counts
    ranked = [item for item, _ in counts.most_common()]
    ranked += sorted(set(split.items) - set(counts))
    return {user: first_unseen(ranked, set(split.history.get(user, ())), k)
            for user in split.targets}


def covisitation(split: Split, k: int = 50, window: int = 10, recent: int = 20,
                 recency: float = 0.5, neighbours: int = 100) -> Lists:
    """Co-visitation alone, streamed like the pipeline: the graph grows in stream order and
    each user's list is taken right after their last streamed rating, so it knows only the
    past, as the pipeline did. ``recency`` weighs each older recent item (tuned on ML-100K,
    like the pipeline's own)."""
    graph = CoVisitation(window=window, max_neighbours=neighbours)
    sequences: dict[str, list[str]] = {}
    last = {r.user_id: n for n, r in enumerate(split.stream)}
    counts: Counter[str] = Counter()
    lists: Lists = {}
    for n, rating in enumerate(split.stream):
        sequence = sequences.setdefault(rating.user_id, [])
        graph.observe(sequence, rating.item_id)
        sequence.append(rating.item_id)
        counts[rating.item_id] += 1
        if last[rating.user_id] != n or rating.user_id not in split.targets:
            continue
        tail = sequence[-recent:]
        weighted = [(item, recency ** (len(tail) - 1 - m)) for m, item in enumerate(tail)]
        ranked = graph.candidates(weighted, 100).ranked()
        if len(ranked) < k + len(sequence):
            ranked += [item for item, _ in counts.most_common(k + len(sequence))]
            ranked += split.items  # nothing known yet: catalogue order
        lists[rating.user_id] = first_unseen(ranked, set(sequence), k)
    return lists


def _half_step(fixed: FloatArray, rows: list[npt.NDArray[np.int64]], reg: float,
               alpha: float) -> FloatArray:
    """Solve every row's factors given the other side's (fixed) factors."""
    factors = fixed.shape[1]
    gram = fixed.T @ fixed + reg * np.eye(factors, dtype=np.float32)
    out = np.zeros((len(rows), factors), dtype=np.float32)
    for row, columns in enumerate(rows):
        if columns.size == 0:
            continue
        chosen = fixed[columns]
        out[row] = np.linalg.solve(gram + alpha * (chosen.T @ chosen),
                                   (1.0 + alpha) * chosen.sum(axis=0))
    return out


def als(split: Split, k: int = 50, factors: int = 64, reg: float = 0.1, alpha: float = 20.0,
        iterations: int = 12, seed: int = 0,
        progress: Callable[[int, int], None] | None = None) -> Lists:
    items = list(split.items)
    item_index = {item: n for n, item in enumerate(items)}
    users = list(split.targets)
    user_index = {user: n for n, user in enumerate(users)}
    pairs = {(user_index[r.user_id], item_index[r.item_id]) for r in split.stream
             if r.user_id in user_index and r.item_id in item_index}
    by_user: list[list[int]] = [[] for _ in users]
    by_item: list[list[int]] = [[] for _ in items]
    for u, i in pairs:
        by_user[u].append(i)
        by_item[i].append(u)
    user_rows = [np.array(sorted(x), dtype=np.int64) for x in by_user]
    item_rows = [np.array(sorted(x), dtype=np.int64) for x in by_item]
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((len(users), factors)) * 0.01).astype(np.float32)
    y = (rng.standard_normal((len(items), factors)) * 0.01).astype(np.float32)
    for step in range(iterations):
        x = _half_step(y, user_rows, reg, alpha)
        y = _half_step(x, item_rows, reg, alpha)
        if progress:
            progress(step + 1, iterations)
    lists: Lists = {}
    for start in range(0, len(users), 512):
        block = x[start:start + 512] @ y.T
        for offset, row in enumerate(block):
            user = users[start + offset]
            row[user_rows[start + offset]] = -np.inf
            top = np.argpartition(-row, k)[:k] if k < len(row) else np.arange(len(row))
            top = top[np.argsort(-row[top])][:k]
            lists[user] = [items[i] for i in top if np.isfinite(row[i])]
    return lists
