"""`streamrec bench index`: exact numpy search against the approximate (usearch HNSW) index,
at growing catalogue sizes, in one run: build time, query latency and recall@k of the
approximate answers against the exact ones.

Vectors: the MovieLens-1M titles embedded by the int8 encoder; larger catalogues are made
of blends of two real item vectors plus a little noise (so they keep the real vectors'
cluster structure, unlike uniform random vectors); queries are user-like: the normalised
mean of 10 catalogue items. Both indexes search with one thread; the graph is built in
bulk (two threads) when the catalogue reaches the threshold, as a worker's would be.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from app.core.catalogue import VectorIndex
from app.data import movielens
from app.encoder.runtime import Encoder, FloatArray
from app.settings import get_settings


def _unit(x: FloatArray) -> FloatArray:
    out: FloatArray = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return out


def catalogue_vectors(real: FloatArray, size: int, rng: np.random.Generator) -> FloatArray:
    if size <= len(real):
        return real[:size]
    a = real[rng.integers(0, len(real), size)]
    b = real[rng.integers(0, len(real), size)]
    w = rng.uniform(0.2, 0.8, (size, 1)).astype(np.float32)
    noise = rng.standard_normal(a.shape).astype(np.float32) * 0.02
    return _unit(w * a + (1 - w) * b + noise)


def _time_queries(search: Callable[[FloatArray], list[tuple[str, float]]],
                  queries: FloatArray) -> tuple[list[list[str]], list[float]]:
    answers, times = [], []
    for query in queries:
        started = time.perf_counter()
        found = search(query)
        times.append((time.perf_counter() - started) * 1000)
        answers.append([item for item, _ in found])
    return answers, times


def run(sizes: list[int], queries: int, k: int, say: Callable[[str], None]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    encoder = Encoder(get_settings().model_dir())
    titles = [m.title for m in movielens.movies("ml-1m")]
    say(f"embedding {len(titles):,} MovieLens-1M titles")
    real = _unit(np.asarray(encoder.encode(titles, "passage"), dtype=np.float32))
    rows = []
    for size in sizes:
        vectors = catalogue_vectors(real, size, rng)
        picks = rng.integers(0, size, (queries, 10))
        asked = _unit(vectors[picks].mean(axis=1))
        exact = VectorIndex(real.shape[1])
        approximate = VectorIndex(real.shape[1], ann_threshold=size)  # one bulk build
        started = time.perf_counter()
        for n, vector in enumerate(vectors):
            exact.upsert(str(n), vector)
        exact_build = time.perf_counter() - started
        started = time.perf_counter()
        for n, vector in enumerate(vectors):
            approximate.upsert(str(n), vector)
        ann_build = time.perf_counter() - started
        truth, exact_ms = _time_queries(partial(exact.exact_search, k=k), asked)
        found, ann_ms = _time_queries(partial(approximate.search, k=k), asked)
        recall = float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found,
                                                                          strict=True)]))
        row = {
            "items": size, "exact_build_s": exact_build, "ann_build_s": ann_build,
            "exact_ms_p50": float(np.percentile(exact_ms, 50)),
            "exact_ms_p99": float(np.percentile(exact_ms, 99)),
            "ann_ms_p50": float(np.percentile(ann_ms, 50)),
            "ann_ms_p99": float(np.percentile(ann_ms, 99)),
            f"recall@{k}": recall,
        }
        say(f"  {size:>9,} items: exact p50 {row['exact_ms_p50']:.2f} ms, "
            f"approximate p50 {row['ann_ms_p50']:.2f} ms, recall@{k} {recall:.3f}")
        rows.append(row)
    return {"k": k, "queries": queries, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    k = report["k"]
    lines = [
        f"| items | exact p50 / p99 (ms) | approximate p50 / p99 (ms) | x faster (p50) | "
        f"recall@{k} | build exact / approximate (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['items']:,} | {r['exact_ms_p50']:.2f} / {r['exact_ms_p99']:.2f} | "
            f"{r['ann_ms_p50']:.2f} / {r['ann_ms_p99']:.2f} | "
            f"{r['exact_ms_p50'] / r['ann_ms_p50']:.1f} | {r[f'recall@{k}']:.3f} | "
            f"{r['exact_build_s']:.1f} / {r['ann_build_s']:.1f} |")
    return "\n".join(lines) + "\n"
