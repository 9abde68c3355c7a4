"""`streamrec bench trainer`: the stream trainer on a real dataset, through real Kafka.

The split's stream (every rating but each user's last, as the replay sends it: a view, and
a purchase for a rating of 4 or more) is cut in time: the first ``head`` share is on the
``events`` topic (with the catalogue on ``items``) before the trainer starts; the trainer
(`streamrec train --stream`, run as a command) trains its first round on it and
publishes. Then the rest of the stream is produced and the trainer, warm, trains one more
round: the time from the last of those events being acknowledged by the broker to the new
version's head being on the models topic is the incremental update's latency (the issue
asks <= 5 minutes). Reported beside it: each round's epochs, seconds, validation NDCG@10
(its model and the served one on the same held-back events), whether it was published, and
the trainer's peak RSS (its memory, with its bytes of state per user and item).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.broker.admin import ensure_topics, wait_until_ready
from app.broker.apache import start_unless_given
from app.data import movielens
from app.demo import item_record, rating_records
from app.evaluation.split import load
from app.harness import WorkerRun, produce_records


def _peak_child_rss_mb() -> float:
    """The largest peak RSS of the child processes waited for (the trainer runs)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


async def _trainer(command: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    """One `streamrec train --stream` run as an operator runs it (its progress on this
    process's stderr); the rounds on record after it."""
    process = await asyncio.create_subprocess_exec(*command, env=env,
                                                   stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"the trainer exited with {process.returncode}")
    rounds: list[dict[str, Any]] = json.loads(out)["rounds"]
    return rounds


async def run(dataset: str, head: float, first_epochs: int, update_epochs: int,
              broker: str | None, say: Callable[[str], None], seed: int = 0
              ) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-bench-trainer-"))
    broker, local = await start_unless_given(broker, workdir, say)
    job = WorkerRun(broker, workdir, 4, name="bench-trainer")
    settings, env = job.settings, job.env
    try:
        await wait_until_ready(settings)
        await ensure_topics(settings)
        split = load(dataset)
        items = [(*item_record(m, 0), m.item_id) for m in movielens.movies(dataset)]
        await produce_records(broker, settings.topic_items, items, None, {}, {})
        records = [(key, value, f"{r.row}-{n}") for r in split.stream
                   for n, (key, value) in enumerate(rating_records(dataset, r))]
        cut = int(len(records) * head)
        say(f"{dataset}: {len(items):,} items; producing {cut:,} of {len(records):,} events "
            f"(the first {head:.0%} of the stream)")
        await produce_records(broker, settings.topic_events, records[:cut], None, {}, {})
        out = workdir / "trainer"
        command = [sys.executable, "-m", "app.cli", "train", "--stream", "--rounds", "1",
                   "--out", str(out), "--epochs", str(first_epochs), "--update-epochs",
                   str(update_epochs), "--seed", str(seed), "--interval", "1e9"]
        started = time.monotonic()
        first = await _trainer([*command, "--every", str(cut)], env)
        first_seconds = time.monotonic() - started
        rss_first = _peak_child_rss_mb()
        say(f"producing the other {len(records) - cut:,} events")
        await produce_records(broker, settings.topic_events, records[cut:], None, {}, {})
        arrived = time.monotonic()
        rounds = await _trainer([*command, "--every", str(len(records) - cut)], env)
        update_seconds = time.monotonic() - arrived
        state_bytes = (out / "state.msgpack").stat().st_size
        last = rounds[-1]
        assert first[-1]["round"] == 1
        assert last["round"] == 2
        return {
            "dataset": dataset, "head": head, "events": len(records), "first_events": cut,
            "first_epochs": first_epochs, "update_epochs": update_epochs, "seed": seed,
            "rounds": rounds,
            "first_round_seconds": round(first_seconds, 1),
            "update_latency_seconds": round(update_seconds, 1),
            "update_published": bool(last.get("published")),
            "peak_rss_mb": round(_peak_child_rss_mb(), 1),
            "peak_rss_mb_first_round": round(rss_first, 1),
            "state_bytes": state_bytes, "users": last["users"], "items": last["items"],
        }
    finally:
        if local is not None:
            await asyncio.to_thread(local.stop)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"`streamrec bench trainer --dataset {report['dataset']} --head {report['head']} "
        f"--first-epochs {report['first_epochs']} --update-epochs {report['update_epochs']}`: "
        f"{report['first_events']:,} of {report['events']:,} events before the first round, "
        "the rest before the second.",
        "",
        "| round | item events | users | items | epochs (best) | train s | round s | "
        "validation NDCG@10 (held-back users) | served, same events | published |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["rounds"]:
        served = r.get("served_valid_ndcg@10")
        lines.append(
            f"| {r['round']} | {r['events']:,} | {r['users']:,} | {r['items']:,} | "
            f"{r['epochs']} ({r['best_epoch']}) | {r['train_seconds']:.0f} | "
            f"{r['round_seconds']:.0f} | {r['valid_ndcg@10']:.4f} ({r['valid_users']:,}) | "
            f"{'-' if served is None else f'{served:.4f}'} | "
            f"{r['published'] or 'no: ' + r['why']} |")
    lines += [
        "",
        f"- First round: {report['first_round_seconds']:.0f} s from start to published.",
        f"- Incremental update: {report['update_latency_seconds']:.0f} s from the last new "
        f"event acknowledged to the round's end "
        f"({'a new version published' if report['update_published'] else 'not published'}; "
        "the issue asks <= 300 s).",
        f"- Memory: peak RSS {report['peak_rss_mb']:,.0f} MB "
        f"({report['peak_rss_mb_first_round']:,.0f} MB after the first round); saved state "
        f"{report['state_bytes'] / 1e6:.1f} MB for {report['users']:,} users and "
        f"{report['items']:,} items ({report['state_bytes'] / max(report['users'], 1):,.0f} "
        "bytes per user).",
    ]
    return "\n".join(lines)
