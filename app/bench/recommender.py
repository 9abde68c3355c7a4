"""`streamrec bench recommender`: the cost of one recommendation, in-process, without Kafka.

The MovieLens-1M catalogue (random unit vectors: this measures the code, not the encoder),
a co-visitation graph grown from the first ratings, and users with up to 50 recent items.
Several candidate-generation configurations are timed in the same run, best of 3 passes;
one with a million more items known to the graph (the per-request cost must follow the
edges a user reaches, not the catalogue's size).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from app.contract.records import ItemUpsert
from app.core.catalogue import entry
from app.core.covisit import CoVisitation
from app.core.recommender import Catalogue, Recommender, Request, UserView
from app.data import movielens

CONFIGS: dict[str, tuple[int, int, int]] = {
    # name: (recent items used, neighbours per recent item, items the graph knows beyond
    # MovieLens's: a large catalogue's id space, each item visited once, with no edges)
    "50 recent x 100 neighbours": (50, 100, 0),
    "20 recent x 100 neighbours (default)": (20, 100, 0),
    "20 recent x 50 neighbours": (20, 50, 0),
    "20 recent x 30 neighbours": (20, 30, 0),
    "default, 1,000,000 more items in the graph": (20, 100, 1_000_000),
}


def run(users: int, ratings: int, say: Callable[[str], None]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    catalogue = Catalogue(384)
    for movie in movielens.movies("ml-1m"):
        vector = rng.standard_normal(384).astype(np.float32)
        vector /= np.linalg.norm(vector)
        catalogue.upsert(entry(ItemUpsert(v=1, event_id="b", item_id=movie.item_id, ts=0,
                                          title=movie.title), vector, "random"))
    histories: dict[str, list[str]] = {}
    for rating in movielens.ratings("ml-1m")[:ratings]:
        histories.setdefault(rating.user_id, []).append(rating.item_id)
    say(f"{len(catalogue.index):,} items, co-visitation from {ratings:,} ratings")
    views = [UserView(catalogue.index.vector(items[-1]), [(i, "view", 1.0) for i in items[-50:]],
                      set()) for items in list(histories.values())[:users]]
    results: dict[str, float] = {}
    for name, (recent, per_item, more) in CONFIGS.items():
        graph = CoVisitation()
        for items in histories.values():
            for i, item in enumerate(items):
                graph.observe(items[max(0, i - graph.window):i], item)
        for n in range(more):
            graph.observe([], f"more-{n}")
        recommender = Recommender(catalogue, covisit=graph, covisit_recent=recent,
                                  covisit_neighbours=per_item)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for view in views:
                recommender.recommend(view, Request(k=10), now=0)
            best = min(best, time.perf_counter() - started)
        results[name] = best / len(views) * 1000
        say(f"  {name}: {results[name]:.2f} ms")
    return {"users": len(views), "ratings": ratings, "ms_per_recommendation": results}


def markdown(report: dict[str, Any]) -> str:
    rows = report["ms_per_recommendation"]
    base = next(iter(rows.values()))
    lines = ["| candidate generation | ms per recommendation | x faster |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {ms:.2f} | {base / ms:.1f} |" for name, ms in rows.items()]
    return "\n".join(lines) + "\n"
