"""`streamrec eval --cut Q`: the global time split (app.evaluation.split.time_split).

The worker streamed every rating before the cut time; at the cut each returning user's list
was asked of it (the replay's end-of-stream lists) and is scored against the user's first
rating after the cut, full ranking, history items in a list counting as misses (scored as
served). Beside it, in the same run and on the same stream:

- popularity: items by their count over the whole stream;
- trending: items by their count over the ``TRENDING_DAYS`` before the cut (all-time
  popularity breaks ties and fills), the "popular lately" a returning user is shown by
  shops that know nothing about them;
- co-visitation alone and implicit ALS, as in the leave-last-out report.

Also the list each user last received before leaving (the replay's online lists: what the
pipeline would show a user who comes back, had it not been asked again), and every figure
per how long the user had been away at the cut (``AWAY_BUCKETS``).
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.profile import DAY_MS
from app.evaluation import baselines
from app.evaluation.replay import COVISIT_EDGES, ReplayRun
from app.evaluation.report import (
    _mean_with_error,
    _per_user_ndcg,
    _score,
    _table,
    history_shown,
    save,
)
from app.evaluation.split import Split
from app.plots import pyplot

TRENDING_DAYS = 30
AWAY_BUCKETS = ((0, 1), (1, 7), (7, 30), (30, 180), (180, None))   # days away at the cut
BASELINES = ("popularity", "trending", "co-visitation alone", "implicit ALS")


def trending(split: Split, k: int = 50, days: int = TRENDING_DAYS) -> dict[str, list[str]]:
    """Each user's list of what was rated most in the ``days`` before the cut (all-time
    counts break ties and fill), leaving out what the user rated."""
    if split.cut_ms is None:
        raise ValueError("trending is scored at a global time split's cut")
    since = split.cut_ms - days * DAY_MS
    recent = Counter(r.item_id for r in split.stream if r.ts_ms >= since)
    overall = split.train_counts
    ranked = sorted(set(split.items) | set(overall),
                    key=lambda item: (-recent[item], -overall[item], item))
    return {user: baselines.first_unseen(ranked, set(split.history.get(user, ())), k)
            for user in split.targets}


def away_days(split: Split) -> dict[str, float]:
    """Per target user, the days from their last streamed rating to the cut."""
    last: dict[str, int] = {}
    for rating in split.stream:
        last[rating.user_id] = rating.ts_ms
    assert split.cut_ms is not None
    return {user: (split.cut_ms - last[user]) / DAY_MS for user in split.targets}


def bucket_name(low: int, high: int | None) -> str:
    return f"> {low} days" if high is None else f"{low}-{high} days"


def evaluate_runs(split: Split, runs: Sequence[ReplayRun],
                  say: Callable[[str], None] = print,
                  advance: Callable[[str, int, int], None] = lambda *_: None
                  ) -> dict[str, Any]:
    """The runs' lists asked at the cut, their lists from before it and the baselines,
    scored on every returning user and per time away."""
    models: dict[str, dict[str, list[str]]] = {}
    for run in runs:
        if run.end_lists:
            models[run.name] = dict(run.end_lists)
    for run in runs:
        if run.lists:
            models[f"{run.name}, last list before leaving"] = {
                user: list(run.lists[user]) for user in split.targets if user in run.lists}
    say("baselines: popularity, trending, co-visitation alone, implicit ALS")
    models["popularity"] = baselines.popularity(split)
    models["trending"] = trending(split)
    models["co-visitation alone"] = baselines.covisitation(split, neighbours=COVISIT_EDGES)
    models["implicit ALS"] = baselines.als(
        split, progress=lambda n, of: advance("implicit ALS: iterations", n, of))
    away = away_days(split)
    users = list(split.targets)
    slices = {bucket_name(low, high): [u for u in users if away[u] >= low
                                       and (high is None or away[u] < high)]
              for low, high in AWAY_BUCKETS}
    results: dict[str, Any] = {}
    for n, (name, lists) in enumerate(models.items()):
        advance("scoring the lists", n, len(models))
        results[name] = {"all": _score(lists, split, users).row(),
                         "away": {bucket: _score(lists, split, members).row()
                                  if members else None
                                  for bucket, members in slices.items()}}
    advance("scoring the lists", len(models), len(models))
    per_user = {name: _per_user_ndcg(lists, split, users) for name, lists in models.items()}
    paired = {f"{variant} - {baseline}":
              _mean_with_error(per_user[variant] - per_user[baseline])
              for variant in (r.name for r in runs if r.end_lists)
              for baseline in ("popularity", "trending")}
    return {
        "protocol": "time split",
        "dataset": split.dataset,
        "cut_ms": split.cut_ms,
        "trending_days": TRENDING_DAYS,
        "users": len(users),
        "items": len(split.items),
        "stream_ratings": len(split.stream),
        "away_users": {bucket: len(members) for bucket, members in slices.items()},
        "pipeline_variants": [run.name for run in runs],
        "history_items_shown_at_cut": {run.name: history_shown(run.end_lists, split)
                                       for run in runs if run.end_lists},
        "models": results,
        "paired_ndcg10": paired,
    }



def _day(ms: int | None) -> str:
    return "-" if ms is None else datetime.datetime.fromtimestamp(
        ms / 1000, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def markdown(report: Mapping[str, Any], command: str, images: Mapping[str, str]) -> str:
    models = report["models"]
    asked = [v for v in report["pipeline_variants"] if v in models]
    best = max(asked, key=lambda v: models[v]["all"]["NDCG@10"]) if asked else None
    lines = [
        f"# Global time split: {report['dataset']}", "",
        f"Produced by `{command}`. Every rating before the cut ({_day(report['cut_ms'])}) "
        f"streamed through the worker ({report['stream_ratings']:,} ratings, "
        f"{report['items']:,} items); each of the {report['users']:,} users who rated "
        "something before it and came back after it was asked for a list at the cut and is "
        "scored on their first rating after it. Full ranking; an item the user rated before "
        "is a miss in its slot (lists as served).", "",
        "## Returning users", "",
        *_table({name: m["all"] for name, m in models.items()}), "",
    ]
    if best is not None:
        ours = models[best]["all"]
        above = [name for name in BASELINES if name in models and any(
            models[name]["all"][m] >= ours[m] for m in ("NDCG@10", "HR@10"))]
        lines += [f"The best pipeline variant (`{best}`, asked at the cut) reads NDCG@10 "
                  f"{ours['NDCG@10']:.4f} / HR@10 {ours['HR@10']:.4f}; baselines at or "
                  "above it on either: " + (", ".join(above) if above else "none") + ".", ""]
    if report.get("paired_ndcg10"):
        lines += ["Paired differences of NDCG@10 over the same users (mean +- standard "
                  "error): " + "; ".join(f"{name} {d['mean']:+.4f} +- {d['stderr']:.4f}"
                                         for name, d in report["paired_ndcg10"].items())
                  + ".", ""]
    lines += ["## By time away at the cut", "",
              "NDCG@10 per how long the user had been away (days from their last rating "
              "before the cut to the cut):", "",
              "| model | " + " | ".join(f"{b} ({n:,})" for b, n in
                                        report["away_users"].items()) + " |",
              "| --- | " + " | ".join("---:" for _ in report["away_users"]) + " |"]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(
            "-" if row is None else f"{row['NDCG@10']:.4f}" for row in m["away"].values())
            + " |")
    shown = report.get("history_items_shown_at_cut", {})
    lines += ["", f"Trending: the {report['trending_days']} days before the cut. Consumed "
              "items in the top 10 of the lists asked at the cut: " + (", ".join(
                  f"{v} {c['top']:,}" for v, c in shown.items()) or "-") + ".", "",
              *[f"![{title}]({path})" for title, path in images.items()], ""]
    return "\n".join(lines)


def plots(report: Mapping[str, Any], folder: Path) -> dict[str, str]:
    """NDCG@10 per model and time away, as grouped bars; {title: path} (none without
    matplotlib)."""
    plt = pyplot()
    if plt is None:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    models = report["models"]
    names = [n for n in models if "last list before leaving" not in n]
    buckets = ["all", *report["away_users"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(buckets))
    for n, name in enumerate(names):
        values = [models[name]["all"]["NDCG@10"]] + [
            np.nan if row is None else row["NDCG@10"] for row in models[name]["away"].values()]
        ax.bar(x - 0.4 + (n + 0.5) * width, values, width=width, label=name)
    ax.set_xticks(x, [f"{b}\n({report['users'] if b == 'all' else report['away_users'][b]:,})"
                      for b in buckets], fontsize=8)
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"{report['dataset']}: returning users at the cut, by time away")
    ax.legend(fontsize=7)
    return {"NDCG@10 by time away": save(fig, folder / f"{report['dataset']}-cut-away.png")}
