"""The evaluation's pure parts, with answers worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from app.data.movielens import Rating
from app.evaluation import baselines
from app.evaluation.metrics import (
    evaluate,
    intra_list_diversity,
    ndcg_at,
    rank_of,
    self_information,
)
from app.evaluation.report import history_shown, without_history
from app.evaluation.split import leave_last_out, time_split


def _r(row: int, user: str, item: str, ts: int) -> Rating:
    return Rating(row, user, item, 5.0, ts)


def test_leave_last_out_withholds_each_users_last_rating_and_counts_prior_interactions() -> None:
    ratings = [
        _r(0, "a", "x", 1), _r(1, "b", "x", 1), _r(2, "a", "y", 2),
        _r(3, "b", "y", 3), _r(4, "a", "z", 3), _r(5, "c", "x", 4),  # c has one rating
    ]
    split = leave_last_out(ratings, ["x", "y", "z"])
    assert {u: t.item_id for u, t in split.targets.items()} == {"a": "z", "b": "y"}
    assert split.history == {"a": ["x", "y"], "b": ["x"]}
    assert [r.row for r in split.stream] == [0, 1, 2]       # targets and c left out
    assert split.targets["b"].prior_item_count == 1          # y once before, by a
    assert split.targets["a"].prior_item_count == 0


def test_the_time_split_streams_the_past_and_asks_returning_users_at_the_cut() -> None:
    from app.core.profile import DAY_MS
    from app.evaluation.replay import asked_at
    from app.evaluation.timesplit import away_days, trending

    day = DAY_MS
    ratings = [
        _r(0, "a", "x", 0), _r(1, "b", "x", 1 * day), _r(2, "b", "y", 40 * day),
        _r(3, "c", "y", 45 * day), _r(4, "d", "z", 50 * day), _r(5, "a", "z", 60 * day),
        _r(6, "a", "y", 61 * day), _r(7, "b", "z", 62 * day), _r(8, "e", "x", 63 * day),
    ]
    split = time_split(ratings, ["x", "y", "z"], 0.5)   # the median time: day 50
    assert split.cut_ms == 50 * day
    assert [r.row for r in split.stream] == [0, 1, 2, 3]   # strictly before the cut
    # a and b came back (their first rating after the cut is the target); c did not, d and
    # e have no history before it: none of theirs is scored
    assert {u: t.item_id for u, t in split.targets.items()} == {"a": "z", "b": "z"}
    assert split.targets["a"].prior_item_count == 0
    assert away_days(split) == {"a": 50.0, "b": 10.0}
    assert asked_at(split) == {"a": 50 * day, "b": 50 * day}
    # trending: the 30 days before the cut (y twice), then all-time counts (x twice)
    assert trending(split, k=3) == {"a": ["y", "z"], "b": ["z"]}
    with pytest.raises(ValueError, match="quantile"):
        time_split(ratings, ["x"], 1.0)


def test_leave_last_out_asks_each_user_at_their_last_streamed_rating() -> None:
    from app.evaluation.replay import asked_at

    ratings = [_r(0, "a", "x", 1), _r(1, "a", "y", 5), _r(2, "a", "z", 9), _r(3, "b", "x", 2),
               _r(4, "b", "y", 3)]
    assert asked_at(leave_last_out(ratings, ["x", "y", "z"])) == {"a": 5, "b": 2}


def test_rank_based_metrics() -> None:
    assert rank_of(["p", "q", "t"], "t") == 3
    assert rank_of(["p"], "t") is None
    assert ndcg_at(1, 10) == 1.0
    assert ndcg_at(3, 10) == pytest.approx(0.5)
    assert ndcg_at(11, 10) == 0.0
    scores = evaluate({"u1": ["t1", "a"], "u2": ["a", "b", "t2"], "u3": ["a"]},
                      {"u1": "t1", "u2": "t2", "u3": "t3", "u4": "t4"},
                      catalogue_size=10, features={}, counts={}, users_in_train=4)
    assert scores.hr10 == pytest.approx(2 / 4)          # u4 without a list is a miss
    assert scores.ndcg10 == pytest.approx((1 + 0.5) / 4)
    assert scores.mrr == pytest.approx((1 + 1 / 3) / 4)
    assert scores.precision10 == pytest.approx(0.05)
    assert scores.coverage10 == pytest.approx(4 / 10)    # t1, a, b, t2


def test_diversity_and_novelty() -> None:
    genres = {"a": ("Drama",), "b": ("Drama",), "c": ("Comedy",)}
    assert intra_list_diversity(["a", "b"], genres) == 0.0
    assert intra_list_diversity(["a", "c"], genres) == 1.0
    assert intra_list_diversity(["a", "b", "c"], genres) == pytest.approx(2 / 3)
    assert self_information("a", {"a": 3}, users=7) == pytest.approx(-math.log2(4 / 8))


def test_history_is_removed_from_published_lists() -> None:
    split = leave_last_out([_r(0, "a", "x", 1), _r(1, "a", "y", 2), _r(2, "a", "z", 3)],
                           ["x", "y", "z", "w"])
    lists, removed = without_history({"a": ["x", "w", "z"]}, split)
    assert lists == {"a": ["w", "z"]}
    assert removed == 1


def test_served_lists_are_scored_as_they_are_and_their_history_items_counted() -> None:
    split = leave_last_out([_r(0, "a", "x", 1), _r(1, "a", "y", 2), _r(2, "a", "z", 3),
                            _r(3, "b", "x", 1), _r(4, "b", "w", 2)], ["x", "y", "z", "w"])
    lists = {"a": ["x", "w", "y", "z"], "b": ["y", "w"]}
    assert history_shown(lists, split, top=2) == {"top": 1, "all": 2, "lists": 1}


def _clustered_split() -> object:
    """Two taste clusters: {x1..x4} and {y1..y4}; every user stays in one cluster and
    watches its films in one of four rotations of the same cycle (1 2 3 4 1 ...)."""
    ratings: list[Rating] = []
    row = 0
    for n in range(40):
        cluster = "x" if n % 2 == 0 else "y"
        rotation = (n // 2) % 4
        for ts, i in enumerate([1 + (rotation + m) % 4 for m in range(4)]):
            ratings.append(_r(row, f"u{n}", f"{cluster}{i}", n * 10 + ts))
            row += 1
    ratings.sort(key=lambda r: r.ts_ms)
    return leave_last_out(ratings, [f"{c}{i}" for c in "xy" for i in range(1, 5)])


def test_covisitation_and_als_find_the_users_cluster_popularity_does_not() -> None:
    split = _clustered_split()
    als = baselines.als(split, k=3, factors=2)
    assert all(als[u][0] == t.item_id for u, t in split.targets.items())
    # streamed co-visitation knows only the past: until another user of the cluster has
    # watched the user's last film followed by the target, it cannot know; after the first
    # round of rotations it always does
    covisit = baselines.covisitation(split, k=3)
    misses = [u for u, t in split.targets.items() if covisit[u][0] != t.item_id]
    assert {int(u[1:]) for u in misses} <= set(range(8)), misses
    popular = baselines.popularity(split, k=3)
    assert all(not set(popular[u]) & set(split.history[u]) for u in split.targets)


def test_hidden_items_lose_their_early_interactions_but_targets_stay() -> None:
    from app.evaluation.split import hide_items

    ratings = [_r(n, f"u{n % 7}", f"i{n % 20}", n) for n in range(400)]
    kept, hidden = hide_items(ratings, 0.1, until=0.8)
    assert len(hidden) == 2
    cutoff = 320
    last = {r.user_id: r.row for r in ratings}
    for r in ratings:
        kept_it = r in kept
        if r.item_id in hidden and r.ts_ms < cutoff and last[r.user_id] != r.row:
            assert not kept_it
        else:
            assert kept_it
    assert hide_items(ratings, 0.1, until=0.8)[1] == hidden   # seeded: the same items


def test_a_simulated_click_is_the_users_next_streamed_rating_never_the_target() -> None:
    from app.evaluation.replay import next_ratings

    ratings = [_r(0, "u", "a", 1), _r(1, "v", "x", 1), _r(2, "u", "b", 2), _r(3, "u", "c", 3),
               _r(4, "v", "y", 4)]
    split = leave_last_out(ratings, ["a", "b", "c", "x", "y"])
    following = next_ratings(split)
    assert following[f"{split.dataset}-0-view"] == ("b", 2)
    assert following[f"{split.dataset}-0-purchase"] == ("b", 2)
    assert f"{split.dataset}-2-view" not in following   # c is u's target: no click
    assert f"{split.dataset}-1-view" not in following   # y is v's target


def test_learning_vs_frozen_scores_each_half_and_pairs_it_with_the_plain_run() -> None:
    from app.evaluation.replay import ReplayRun
    from app.evaluation.report import learning_vs_frozen

    ratings = [_r(n, f"u{n % 4}", f"i{n}", n) for n in range(12)]
    split = leave_last_out(ratings, [f"i{n}" for n in range(12)])
    targets = {u: t.item_id for u, t in split.targets.items()}
    run = ReplayRun(dataset="t", variant="feedback", sources="", k=10, events=0, seconds=1,
                    events_per_second=0, recommendations=4,
                    experiment={"name": "ranker", "shares": {"frozen": 0.5, "learning": 0.5}},
                    user_variants={"u0": "frozen", "u1": "frozen", "u2": "learning",
                                   "u3": "learning"},
                    shown_log=[(0, 0, 0), (1, 1, 1), (1, 1, 1), (0, 1, 0)],
                    versions=["default-2", "learning-1.1"],
                    hits={"u0": [4, 1], "u1": [2, 0], "u2": [4, 2], "u3": [5, 5]})
    lists = {u: [targets[u]] if run.user_variants[u] == "learning" else ["i0"]
             for u in targets}
    plain = {u: ["i0"] for u in targets}
    # the plain run: the frozen users as in the feedback run, the learning users less often
    # shown their next item; u3 got no list in the plain run and is left out of the pairing
    plain_hits = {"u0": [4, 1], "u1": [2, 0], "u2": [4, 1]}
    assert "ctr_effect" not in learning_vs_frozen(split, run, lists, plain)
    result = learning_vs_frozen(split, run, lists, plain, plain_hits)
    learning, frozen = result["variants"]["learning"], result["variants"]["frozen"]
    assert learning["ndcg10"]["mean"] == 1.0
    assert frozen["ndcg10"]["mean"] == 0.0
    assert learning["paired_difference"]["mean"] == 1.0
    assert frozen["paired_difference"]["mean"] == 0.0
    assert (learning["lists"], learning["clicks"]) == (2, 2)
    assert learning["ctr"] == 2 / (2 * 10)
    assert result["versions"] == 2
    assert result["effect"]["ndcg10"] == 1.0        # learning +1 on its users, frozen 0
    assert learning["list_ctr"]["mean"] == 0.5      # u2 only: u3 has no plain-run lists
    assert learning["list_ctr_paired_difference"]["mean"] == 0.25
    assert frozen["list_ctr"]["mean"] == 1 / 6      # pooled: 1 hit in 4 + 2 lists
    assert frozen["list_ctr_paired_difference"] == {"mean": 0.0, "stderr": 0.0}
    ctr = result["ctr_effect"]
    assert ctr["difference"] == 0.25
    assert ctr["relative"] == 1.0                   # against u2's 0.25 in the plain run
    assert len(result["curve"]["learning"]) == 20


def test_pooled_hit_rate_weighs_users_by_their_lists_and_pairs_on_the_same_users() -> None:
    from app.evaluation.report import _pooled_hit_rate

    hits = {"a": [1, 1], "b": [99, 9], "c": [50, 5]}
    rate, influence = _pooled_hit_rate(hits, ["a", "b", "c"])
    assert rate["mean"] == 15 / 150                 # not the mean of 1, 0.09 and 0.1
    assert influence.sum() == pytest.approx(0.0)    # linearised around the pooled rate
    # delta method: the error of sum(hit) / sum(lists) over users, users the units
    lists, hit = np.array([1, 99, 50.0]), np.array([1, 9, 5.0])
    expected = np.std((hit - 0.1 * lists) / lists.mean(), ddof=1) / np.sqrt(3)
    assert rate["stderr"] == pytest.approx(expected)
    assert _pooled_hit_rate({}, [])[0] == {"mean": 0.0, "stderr": 0.0}


def test_the_time_split_report_scores_lists_asked_at_the_cut_beside_trending() -> None:
    from app.core.profile import DAY_MS
    from app.evaluation import timesplit
    from app.evaluation.replay import ReplayRun

    day = DAY_MS
    ratings = [_r(0, "a", "x", 0), _r(1, "b", "x", 1 * day), _r(2, "b", "y", 40 * day),
               _r(3, "c", "y", 45 * day), _r(4, "a", "z", 60 * day), _r(5, "b", "z", 62 * day),
               _r(6, "d", "x", 63 * day)]
    split = time_split(ratings, ["x", "y", "z"], 0.5)
    run = ReplayRun(dataset="t", variant="frozen", sources="", k=3, events=4, seconds=1.0,
                    events_per_second=4.0, recommendations=4,
                    lists={"a": ["y", "x"], "b": ["z"]},           # before leaving
                    end_lists={"a": ["z", "y"], "b": ["y", "z"]})  # b is shown y again
    result = timesplit.evaluate_runs(split, [run], say=lambda _: None)
    models = result["models"]
    assert models["frozen"]["all"]["HR@10"] == 1.0
    assert models["frozen"]["all"]["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert models["frozen, last list before leaving"]["all"]["HR@10"] == 0.5
    assert result["history_items_shown_at_cut"]["frozen"]["top"] == 1   # b's y
    # the cut is day 45: a last rated on day 0, b on day 40
    assert result["away_users"] == {"0-1 days": 0, "1-7 days": 1, "7-30 days": 0,
                                    "30-180 days": 1, "> 180 days": 0}
    # frozen ranks a's z first and b's second, trending the other way round: 0 on average
    assert result["paired_ndcg10"]["frozen - trending"]["mean"] == pytest.approx(
        ((1 - 1 / math.log2(3)) + (1 / math.log2(3) - 1.0)) / 2)
    text = timesplit.markdown(result, "streamrec eval --cut 0.5", {})
    assert "| frozen |" in text
    assert "| trending |" in text


def test_a_many_worker_run_is_saved_and_reported_beside_the_single_worker_one(
        tmp_path: Path) -> None:
    from app.evaluation.replay import ReplayRun

    def run(workers: int, lists: dict[str, list[str]]) -> ReplayRun:
        return ReplayRun(dataset="t", variant="frozen", sources="", k=3, events=1,
                         seconds=1.0, events_per_second=1.0, recommendations=1,
                         lists=lists, workers=workers)

    one, four = run(1, {"a": ["y"]}), run(4, {"a": ["x"]})
    assert (one.name, four.name) == ("frozen", "frozen x4 workers")
    assert one.save(tmp_path).name == "frozen.json"
    assert four.save(tmp_path).name == "frozen-x4.json"
    assert ReplayRun.load(tmp_path / "frozen-x4.json").workers == 4
