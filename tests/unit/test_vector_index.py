"""The catalogue index: exact below the threshold, approximate (usearch HNSW) above it, with
the same in-place semantics either way."""

from __future__ import annotations

import numpy as np

from app.core.catalogue import VectorIndex


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((50, 64)))
    return _unit(centres[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, 64)))


def test_the_index_turns_approximate_at_the_threshold_and_keeps_recall() -> None:
    vectors = _clustered(3000)
    exact, approximate = VectorIndex(64), VectorIndex(64, ann_threshold=1000)
    for n, v in enumerate(vectors):
        exact.upsert(str(n), v)
        approximate.upsert(str(n), v)
        assert approximate.approximate == (n + 1 >= 1000)
    queries = _unit(vectors[:50] + 0.1)
    recall = np.mean([
        len({i for i, _ in exact.search(q, 20)} & {i for i, _ in approximate.search(q, 20)}) / 20
        for q in queries])
    assert recall >= 0.9
    found = approximate.search(queries[0], 5)
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    assert all(abs(s - float(vectors[int(i)] @ queries[0])) < 1e-5 for i, s in found)


def test_approximate_search_honours_removal_stock_and_exclusions() -> None:
    vectors = _clustered(1500, seed=1)
    index = VectorIndex(64, ann_threshold=100)
    for n, v in enumerate(vectors):
        index.upsert(str(n), v)
    query = vectors[7]
    assert index.search(query, 1)[0][0] == "7"
    index.remove("7")
    assert "7" not in {i for i, _ in index.search(query, 50)}
    index.upsert("8", vectors[8], available=False)            # out of stock
    assert "8" not in {i for i, _ in index.search(vectors[8], 50)}
    index.upsert("8", vectors[8], available=True)             # back in stock
    assert index.search(vectors[8], 1)[0][0] == "8"
    top = [i for i, _ in index.search(vectors[9], 10)]
    excluded = set(top[:5])
    assert not excluded & {i for i, _ in index.search(vectors[9], 10, excluded)}
    moved = _unit(-vectors[9])                                # an upsert moves the item
    index.upsert("9", moved)
    assert index.search(moved, 1)[0][0] == "9"


def test_the_approximate_index_can_be_built_before_the_encoder_is_loaded() -> None:
    """usearch imported before onnxruntime crashes the process when onnxruntime loads; the
    index loads them in the safe order. Checked in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from app.core.catalogue import VectorIndex\n"
            "i = VectorIndex(8, ann_threshold=1)\n"
            "i.upsert('a', np.ones(8, dtype=np.float32) / 8 ** 0.5)\n"
            "import onnxruntime\n"
            "print(i.search(np.ones(8, dtype=np.float32), 1)[0][0])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "a"


def test_searching_for_rows_answers_what_search_answers() -> None:
    """``search_rows`` is ``search`` by row (exact and approximate), the rows' ids and
    hashes the items' own, through removals, stock changes and exclusions."""
    from app.core import consumed
    rng = np.random.default_rng(5)
    for threshold in (None, 50):
        index = VectorIndex(16, capacity=8, ann_threshold=threshold)
        vectors = rng.standard_normal((120, 16)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for n, vector in enumerate(vectors):
            index.upsert(f"i{n}", vector, available=n % 7 != 0)
        for n in range(0, 120, 9):
            index.remove(f"i{n}")
        index.upsert("i9", vectors[9])   # back, in a reused row
        for query in vectors[:10]:
            exclude = {"i1", "i2", "gone"}
            rows = index.search_rows(query, 20, exclude)
            assert index.ids_at(rows.tolist()) == [i for i, _ in index.search(query, 20,
                                                                               exclude)]
            assert index.hashes_at(rows).tolist() == consumed.hashes(
                index.ids_at(rows.tolist())).tolist()
            assert index.live_at(rows).all()
