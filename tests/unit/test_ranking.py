"""Known-answer tests of the pipeline's pure core: interest, co-visitation, ranking."""

from __future__ import annotations

import numpy as np

from app.core.covisit import CoVisitation
from app.core.profile import DAY_MS, EVENT_WEIGHTS, Interest, add_signal, bounded_append, decay
from app.core.ranking import (
    Candidates,
    RankerParams,
    allowed,
    explain,
    mmr,
    mmr_many,
    project,
    score,
)


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


# a catalogue of three obvious clusters in 3-d: A along x, B along y, C along z
A1, A2, B1, B2, C1 = unit(1, 0.05, 0), unit(1, 0, 0.05), unit(0.05, 1, 0), unit(0, 1, 0.05), \
    unit(0, 0.05, 1)
IDS = ["a1", "a2", "b1", "b2", "c1"]
VECTORS = np.stack([A1, A2, B1, B2, C1])


def candidates(covisit=None, source=None, popularity=None) -> Candidates:
    n = len(IDS)
    return Candidates(
        item_ids=IDS, vectors=VECTORS,
        covisit=np.asarray(covisit or [0.0] * n, dtype=np.float32),
        covisit_source=source or [None] * n,
        popularity=np.asarray(popularity or [0.0] * n, dtype=np.float32),
        freshness=np.zeros(n, dtype=np.float32),
        categories=["x", "x", "y", "y", "z"],
    )


def test_half_life() -> None:
    assert decay(14 * DAY_MS, 14 * DAY_MS) == 0.5
    assert decay(-5, 14 * DAY_MS) == 1.0


def test_interest_follows_weighted_recent_signals() -> None:
    interest = Interest.empty(3)
    interest = add_signal(interest, A1, EVENT_WEIGHTS["view"], 0, 14 * DAY_MS)
    interest = add_signal(interest, B1, EVENT_WEIGHTS["purchase"], 1000, 14 * DAY_MS)
    direction = interest.unit()
    assert direction is not None
    assert direction @ B1 > direction @ A1  # a purchase outweighs a view


def test_interest_is_independent_of_arrival_order() -> None:
    half = 7 * DAY_MS
    signals = [(A1, 1.0, 0), (B1, 3.0, 5 * DAY_MS), (C1, 5.0, 9 * DAY_MS)]
    forward = Interest.empty(3)
    for s, w, t in signals:
        forward = add_signal(forward, s, w, t, half)
    backward = Interest.empty(3)
    for s, w, t in reversed(signals):
        backward = add_signal(backward, s, w, t, half)
    assert np.allclose(forward.vector, backward.vector, atol=1e-6)
    assert np.isclose(forward.weight, backward.weight)


def test_bounded_append_moves_repeats_to_the_end() -> None:
    assert bounded_append(["a", "b", "c"], "a", 3) == ["b", "c", "a"]
    assert bounded_append(["a", "b", "c"], "d", 3) == ["b", "c", "d"]


def test_covisitation_prefers_close_neighbours_and_is_bounded() -> None:
    graph = CoVisitation(window=3, max_neighbours=2)
    graph.observe(["x", "y"], "z")  # y -> z at distance 1, x -> z at distance 2
    assert graph.neighbours("y", 2) == [("z", 1.0)]
    assert graph.neighbours("x", 2) == [("z", 0.5)]
    assert graph.neighbours("z", 2) == []           # directed: z leads nowhere yet
    both = CoVisitation(window=3, backward=0.5)
    both.observe(["x", "y"], "z")
    assert both.neighbours("z", 2) == [("y", 0.5), ("x", 0.25)]
    for i in range(10):
        graph.observe(["hub"], f"n{i}")
    assert len(graph.edges["hub"]) <= 4
    found = graph.candidates([("y", 1.0)], k=5)
    scores, sources = found.lookup(["z", "x"])
    assert scores.tolist() == [1.0, 0.0]
    assert sources == ["y", None]


def test_covisitation_candidates_sum_neighbours_and_name_the_strongest_source() -> None:
    graph = CoVisitation(window=1)
    for history, item in [(["a"], "t"), (["a"], "t"), (["b"], "t"), (["b"], "u"),
                          (["b"], "u"), (["b"], "u"), (["c"], "v")]:
        graph.observe(history, item)
    found = graph.candidates([("a", 1.0), ("b", 0.5)], k=10)
    assert found.ranked() == ["t", "u"]            # t: 2 + 0.5 = 2.5, u: 1.5; v unreachable
    assert found.ranked(1) == ["t"]
    scores, sources = found.lookup(["u", "t", "v", "unknown"])
    assert scores.tolist() == [1.5, 2.5, 0.0, 0.0]
    assert sources == ["b", "a", None, None]
    assert graph.candidates([("b", 1.0)], k=1).ranked() == ["u"]  # b's strongest only
    assert len(graph.candidates([("nothing", 1.0)], k=5)) == 0


def test_the_obvious_item_ranks_first() -> None:
    scored = score(A1, candidates(), RankerParams())
    assert IDS[int(np.argmax(scored.total))] in {"a1", "a2"}
    assert scored.semantic[0] > scored.semantic[2]


def test_projection_defaults_to_cosine() -> None:
    assert np.allclose(project(np.array([[3.0, 4.0]], dtype=np.float32), None, None),
                       [[0.6, 0.8]])
    flip = np.array([[0, 1], [1, 0]], dtype=np.float32)
    assert np.allclose(project(np.array([[1.0, 0.0]], dtype=np.float32), flip, None),
                       [[0.0, 1.0]])


def test_covisitation_can_outrank_similarity() -> None:
    cands = candidates(covisit=[0, 0, 0, 0, 5.0], source=[None, None, None, None, "a1"])
    scored = score(A1, cands, RankerParams(semantic=0.5, covisit=1.0))
    assert IDS[int(np.argmax(scored.total))] == "c1"


def test_filters() -> None:
    keep = allowed(candidates(), blocked={"a1"}, allow_categories=None, deny_categories={"z"})
    assert keep.tolist() == [False, True, True, True, False]
    keep = allowed(candidates(), blocked=set(), allow_categories={"y"}, deny_categories=set())
    assert keep.tolist() == [False, False, True, True, False]


def test_mmr_diversifies() -> None:
    relevance = np.array([1.0, 0.99, 0.6, 0.59, 0.1], dtype=np.float32)
    assert mmr(relevance, VECTORS, 2, lam=1.0) == [0, 1]  # pure relevance: both A items
    first, second = mmr(relevance, VECTORS, 2, lam=0.5)  # diversity: an A, then a B
    assert (IDS[first], IDS[second][0]) == ("a1", "b")
    assert sorted(mmr(relevance, VECTORS, 10, lam=0.5)) == [0, 1, 2, 3, 4]  # each once
    filtered = np.array([1.0, -np.inf, 0.5, -np.inf, -np.inf], dtype=np.float32)
    assert mmr(filtered, VECTORS, 5, lam=0.85) == [0, 2]  # never a filtered or repeated item


def test_mmr_leaves_out_only_candidates_that_cannot_win() -> None:
    """The pruned MMR picks exactly what the loop over every candidate picks."""
    from app.core.ranking import _mmr
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(1, 300))
        vectors = rng.standard_normal((n, 16)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        relevance = (rng.standard_normal(n) * rng.choice([0.05, 0.3, 1.0])).astype(np.float32)
        relevance[rng.random(n) < 0.2] = -np.inf
        if trial % 10 == 0:
            relevance[: n // 2] = relevance[0]   # ties
        k, lam = int(rng.integers(1, 25)), float(rng.choice([0.3, 0.8, 0.95, 1.0]))
        assert mmr(relevance, vectors, k, lam) == _mmr(relevance, vectors, k, lam)


def test_mmr_of_many_rows_at_once_is_each_row_s_mmr() -> None:
    """Rankings of the same candidates by several relevances (the online choice's scales),
    taken together, pick what each row's own MMR picks (ties, filtered rows, fewer
    candidates than k, rows with nothing left included)."""
    rng = np.random.default_rng(11)
    for trial in range(150):
        n, rows = int(rng.integers(1, 200)), int(rng.integers(1, 8))
        vectors = rng.standard_normal((n, 16)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        base = rng.standard_normal(n).astype(np.float32)
        relevance = (base[None, :] + rng.standard_normal((rows, 1)).astype(np.float32)
                     * rng.standard_normal(n).astype(np.float32)[None, :]).astype(np.float32)
        relevance[:, rng.random(n) < 0.2] = -np.inf
        if trial % 10 == 0:
            relevance[:, : n // 2] = relevance[:, :1]   # ties
        if trial % 25 == 0:
            relevance[0] = -np.inf                      # a row with nothing to pick
        k, lam = int(rng.integers(1, 25)), float(rng.choice([0.3, 0.8, 0.95, 1.0]))
        assert mmr_many(relevance, vectors, k, lam) == [
            mmr(row, vectors, k, lam) for row in relevance]
    assert mmr_many(np.zeros((2, 0), dtype=np.float32), vectors, 3, 0.9) == [[], []]


def test_explanations_name_the_strongest_signal() -> None:
    cands = candidates(covisit=[0, 0, 0, 0, 5.0], source=[None, None, None, None, "b2"])
    scored = score(A1, cands, RankerParams())
    history = [("a2", A2), ("b2", B2)]
    assert explain([4], cands, scored, history, None)[0].item_id == "b2"
    assert explain([4], cands, scored, history, None)[0].kind == "covisit"
    assert explain([0], cands, scored, history, None)[0].item_id == "a2"
    assert explain([0], cands, scored, history, ("space", A1))[0].kind == "search"
    assert explain([0, 4], cands, scored, history, None) == [
        explain([0], cands, scored, history, None)[0],
        explain([4], cands, scored, history, None)[0]]           # rows are independent
    assert explain([], cands, scored, history, None) == []
    cold = score(None, candidates(popularity=[1, 2, 3, 4, 5]), RankerParams())
    assert explain([4], candidates(popularity=[1, 2, 3, 4, 5]), cold, [], None)[0].kind == "popular"
