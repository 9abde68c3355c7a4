"""`streamrec bench behaviour`: what the behaviour model costs a worker per recomputed list,
measured on a trained checkpoint and real histories, in one run: the graph a worker runs
(the last block computes the last position only) against the graph before it (every
position, then the last), both exported from the same weights, each at several batch
sizes; then the scoring that follows (the catalogue's log-lift and the top 100, numpy).

Both graphs run in onnxruntime with one thread, as in a worker; each batch size is timed
``repeats`` times over the same users, the median kept. Run it with nothing else on the
machine (a training run on the same cores doubles the figures)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TOP = 100   # the candidates the `sequence` source proposes


def _per_user_ms(run: Callable[[slice], Any], users: int, batch: int, repeats: int) -> float:
    """The median over ``repeats`` of the time per user to ``run`` every user's slice of
    ``batch`` users."""
    laps = []
    for _ in range(repeats):
        started = time.perf_counter()
        for at in range(0, users, batch):
            run(slice(at, at + batch))
        laps.append((time.perf_counter() - started) * 1000 / users)
    return statistics.median(laps)


def run(checkpoint: Path, dataset: str, batches: Sequence[int], users: int, repeats: int,
        say: Callable[[str], None]) -> dict[str, Any]:
    from app.encoder.behaviour import SequenceModel
    from app.evaluation.split import load
    from app.train.export import export
    from app.train.run import load_checkpoint, sample_tokens

    model = load_checkpoint(checkpoint)
    config = model.config
    split = load(dataset)
    tokens = sample_tokens(split, config.length, users)
    say(f"{checkpoint.name}: d={config.dim}, {config.blocks} blocks, length {config.length}, "
        f"{config.items:,} items; {len(tokens.items)} real histories of {dataset}")
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "dataset": dataset,
                              "config": config.as_dict(), "users": len(tokens.items),
                              "repeats": repeats, "graphs": {}}
    with tempfile.TemporaryDirectory() as folder:
        served: SequenceModel | None = None
        for name, every in (("every position (before)", True), ("last position", False)):
            target = Path(folder) / ("every" if every else "last")
            export(model, split.items, tokens, target, every_position=every)
            loaded = SequenceModel.load(target, threads=1)
            session = loaded.session

            def infer(rows: slice, session: Any = session) -> Any:
                return session.run(["user"], {"items": tokens.items[rows],
                                              "kinds": tokens.kinds[rows],
                                              "gaps": tokens.gaps[rows]})[0]

            infer(slice(0, None))   # warm up
            costs = {batch: _per_user_ms(infer, len(tokens.items), batch, repeats)
                     for batch in batches}
            report["graphs"][name] = {"onnx_bytes": (target / "user.onnx").stat().st_size,
                                      "ms_per_user": costs}
            say(f"{name}: " + ", ".join(f"batch {b}: {ms:.3f} ms/user"
                                        for b, ms in costs.items()))
            served = loaded
        assert served is not None
        space = served.space
        space.sync(0, list(split.items), lambda item: None)
        vectors = np.asarray(served.session.run(
            ["user"], {"items": tokens.items, "kinds": tokens.kinds, "gaps": tokens.gaps})[0])

        def score(rows: slice) -> None:
            for lift in space.log_lift(vectors[rows]):
                space.top(lift, TOP)

        report["scoring_ms_per_user"] = {b: _per_user_ms(score, len(vectors), b, repeats)
                                         for b in batches}
        say("scoring (log-lift over the catalogue, top 100): " + ", ".join(
            f"batch {b}: {ms:.3f} ms/user" for b, ms in report["scoring_ms_per_user"].items()))
        report["recommendation_ms"] = _recommendations(split, served, tokens, vectors,
                                                        repeats)
        say("one recommendation (the ranker, in-process): " + ", ".join(
            f"{name} {ms:.2f} ms" for name, ms in report["recommendation_ms"].items()))
    return report


def _recommendations(split: Any, served: Any, tokens: Any, vectors: Any,
                     repeats: int) -> dict[str, float]:
    """The ranker's cost for one list with and without the model's vector (the `sequence`
    source's 100 candidates and the feature), on the same users: a co-visitation graph and
    popularity grown from the split's stream, random text vectors (this times the code)."""
    from app.contract.records import ItemUpsert
    from app.core.catalogue import entry
    from app.core.recommender import Request, UserView
    from app.core.sequence import KINDS
    from app.settings import Settings
    from app.worker.pipeline import make_recommender

    rng = np.random.default_rng(0)
    recommender = make_recommender(Settings(), 384, served)
    for item in split.items:
        vector = rng.standard_normal(384).astype(np.float32)
        recommender.catalogue.upsert(entry(ItemUpsert(v=1, event_id="b", item_id=item, ts=0,
                                                      title=item), vector / np.linalg.norm(
                                                          vector), "random"))
    histories: dict[str, list[str]] = {}
    for rating in split.stream:
        seen = histories.setdefault(rating.user_id, [])
        recommender.covisit.observe(seen[-recommender.covisit.window:], rating.item_id)
        recommender.popularity.add(rating.item_id, 1.0, rating.ts_ms)
        seen.append(rating.item_id)
    kind = {token: name for name, token in KINDS.items()}
    views = []
    for row, vector in zip(tokens.items, vectors, strict=True):
        recent = [(split.items[i - 1], kind.get(1, "view"), 1.0) for i in row[row > 0][-50:]]
        views.append((recent, vector))
    costs: dict[str, float] = {}
    for name, with_model in (("without the model", False), ("with the model", True)):
        laps = []
        for _ in range(repeats):
            started = time.perf_counter()
            for recent, vector in views:
                recommender.recommend(UserView(None, recent, set(),
                                               behaviour=vector if with_model else None),
                                      Request(k=10), now=0)
            laps.append((time.perf_counter() - started) * 1000 / len(views))
        costs[name] = statistics.median(laps)
    return costs


def markdown(report: dict[str, Any]) -> str:
    batches = list(next(iter(report["graphs"].values()))["ms_per_user"])
    lines = [f"| graph | ONNX MB | {' | '.join(f'batch {b}' for b in batches)} |",
             f"| --- | ---: | {' | '.join('---:' for _ in batches)} |"]
    for name, graph in report["graphs"].items():
        lines.append(f"| {name} | {graph['onnx_bytes'] / 1e6:.1f} | "
                     + " | ".join(f"{graph['ms_per_user'][b]:.3f}" for b in batches) + " |")
    lines.append("| scoring (numpy) | | " + " | ".join(
        f"{report['scoring_ms_per_user'][b]:.3f}" for b in batches) + " |")
    lines.append("")
    lines.append("| one recommendation (ranker, in-process) | ms |")
    lines.append("| --- | ---: |")
    lines += [f"| {name} | {ms:.2f} |" for name, ms in report["recommendation_ms"].items()]
    before, after = report["graphs"].values()
    ratio = ", ".join(f"{before['ms_per_user'][b] / after['ms_per_user'][b]:.2f}x"
                      for b in batches)
    return "\n".join(lines) + f"\n\nms per user; speed-up of the served graph: {ratio}\n"
