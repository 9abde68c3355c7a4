"""The `streamrec replay` and `streamrec eval` commands: broker, progress and files."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import typer

from app.broker.apache import start_unless_given
from app.data.interactions import dataset_name
from app.evaluation import report as reporting
from app.evaluation import timesplit
from app.evaluation.replay import VARIANTS, ReplayRun, StreamTraining, replay, summary
from app.evaluation.split import load
from app.progress import Advance, phases


def label(dataset: str, cold_items: float, cut: float | None = None) -> str:
    """The runs' folder and the report's name: the dataset (a dataset file's name), its
    cold-start experiment, or its global time split."""
    name = dataset_name(dataset)
    if cut is not None:
        return f"{name}-cut{round(cut * 100)}"
    return f"{name}-cold{round(cold_items * 100)}" if cold_items > 0 else name


async def run_replays(dataset: str, variants: list[str], k: int, rate: float | None,
                      window: int, partitions: int, broker: str | None, out: Path,
                      cold_items: float = 0.0, behaviour_model: Path | None = None,
                      training: StreamTraining | None = None, cut: float | None = None,
                      workers: int = 1, item_stats: str = "local") -> None:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise typer.BadParameter(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    with phases() as (say, advance):
        await _replay_variants(dataset, variants, k, rate, window, partitions, broker, out,
                               cold_items, behaviour_model, training, cut, say, advance,
                               workers, item_stats)


def _timed(advance: Advance, phase: str) -> Callable[[int, int, float], None]:
    return lambda done, of, _seconds: advance(phase, done, of)


async def _replay_variants(dataset: str, variants: list[str], k: int, rate: float | None,
                           window: int, partitions: int, broker: str | None, out: Path,
                           cold_items: float, behaviour_model: Path | None,
                           training: StreamTraining | None, cut: float | None,
                           say: Callable[[str], None], advance: Advance, workers: int = 1,
                           item_stats: str = "local") -> None:
    split = load(dataset, cold_items, cut)
    if split.cut_ms is not None:
        say(f"{dataset}: {len(split.stream):,} ratings before the cut ({cut:.0%} of the "
            f"stream's time) to stream; {len(split.targets):,} returning users' first rating "
            "after it are the targets")
    else:
        say(f"{dataset}: {len(split.stream):,} ratings to stream, "
            f"{len(split.targets):,} users' last ratings withheld as targets"
            + (f", {len(split.hidden):,} items hidden until late" if split.hidden else ""))
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-replay-"))
    broker, local = await start_unless_given(broker, workdir, say)
    try:
        for variant in variants:
            run = await replay(split, broker, workdir, variant, k=k, rate=rate, window=window,
                               partitions=partitions, say=say,
                               progress=_timed(advance, f"{variant}: events"),
                               pull_progress=_timed(advance, f"{variant}: users asked"),
                               behaviour_model=behaviour_model, training=training,
                               workers=workers, item_stats=item_stats)
            path = run.save(out / label(dataset, cold_items, cut))
            s = summary(run)
            say(f"{run.name}: {s['events']:,} events in {s['seconds']:.0f}s "
                f"({s['events_per_second']:,}/s), {s['recommendations']:,} recommendations, "
                f"latency p50 {s['latency_p50_ms']:.0f} ms p99 {s['latency_p99_ms']:.0f} ms "
                f"-> {path}")
    finally:
        if local is not None:
            local.stop()


def run_eval(dataset: str, runs: Path, report_path: Path | None, update_benchmarks: bool,
             json_output: bool, cold_items: float = 0.0, cut: float | None = None) -> int:
    name = label(dataset, cold_items, cut)
    folder = runs / name
    def many(pattern: str) -> list[Path]:
        return sorted(folder.glob(pattern), key=lambda p: int(p.stem.rpartition("-x")[2]))

    # each variant's single-worker run, its many-worker ones, then the same with global
    # item statistics
    found = [path for v in VARIANTS for path in [
        folder / f"{v}.json", *many(f"{v}-x*.json"),
        folder / f"{v}-global.json", *many(f"{v}-global-x*.json")] if path.exists()]
    if not found:
        typer.echo(f"no replay runs in {folder}: run `streamrec replay --dataset {dataset}`"
                   + (f" --cold-items {cold_items}" if cold_items else "")
                   + (f" --cut {cut}" if cut is not None else ""), err=True)
        return 2
    loaded = [ReplayRun.load(path) for path in found]

    with phases() as (say, advance):
        split = load(dataset, cold_items, cut)
        evaluate = reporting.evaluate_runs if cut is None else timesplit.evaluate_runs
        result = evaluate(split, loaded, say, advance)
    result["dataset"] = name
    command = "streamrec " + shlex.join(sys.argv[1:])
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        if cut is None:
            images = reporting.plots(result, loaded, report_path.parent / "img",
                                     report_path.stem)
            report_path.write_text(reporting.markdown(result, command, images))
        else:
            images = timesplit.plots(result, report_path.parent / "img")
            report_path.write_text(timesplit.markdown(result, command, images))
        tables = report_path.with_suffix(".json")   # the figures of record, for tools
        tables.write_text(json.dumps({"command": command, **result}, indent=1) + "\n")
        say(f"report: {report_path} (tables: {tables})")
        if update_benchmarks and cut is None:
            reporting.update_benchmarks(Path("BENCHMARKS.md"), name, result, command,
                                        str(report_path))
    if json_output:
        typer.echo(json.dumps(result, indent=2))
    else:
        for name, model in result["models"].items():
            row = model["all"]
            typer.echo(f"{name:>22}  NDCG@10 {row['NDCG@10']:.4f}  HR@10 {row['HR@10']:.4f}  "
                       f"HR@50 {row['HR@50']:.4f}  MRR {row['MRR']:.4f}")
        for name, row in (result.get("end_of_stream") or {}).items():
            typer.echo(f"{name + ', end of stream':>22}  NDCG@10 {row['NDCG@10']:.4f}  "
                       f"HR@10 {row['HR@10']:.4f}  HR@50 {row['HR@50']:.4f}  "
                       f"MRR {row['MRR']:.4f}")
    return 0
