"""`streamrec bench pipeline`: one real worker on Apache Kafka, the MovieLens-1M catalogue and
its ratings as events, measured from outside with plain Kafka clients.

1. Catalogue: the 3,883 movies are published and the run waits until the worker has
   embedded and indexed all of them.
2. Throughput, in the same run for five jobs: a backlog of N events is produced first;
   then Faust's decode-only ceiling (through Faust's streams), StreamRec's intake alone
   (decoding only, read as StreamRec reads: below Faust's streams, so it can exceed the
   ceiling), the StreamRec job written the naive way (one event at a time: one table
   write and one recommendation per event), the same job in Quix Streams
   (`app/peers/quix_job.py`) and StreamRec each work it off with a fresh consumer group
   (without ``references``, the two slow peers, naive and Quix Streams, are left out);
   events/s is measured from the group's first commit to its last (start-up excluded).
   With ``profile``, py-spy samples the StreamRec worker meanwhile.
3. Latency: events paced at half StreamRec's rate (or a fixed ``latency_rate``, to compare two
   builds at the same load); each recommendation is matched to the send
   time of the event it was computed after (its `source_event_id`): p50/p99 of
   produced_at - sent.
4. Pull API: GET /users/{id}/recommendations, open loop at a fixed rate.
5. Live regime: the same worker is sent MovieLens-1M's next events in time order as fast as
   it keeps up (never more than ``live_ahead`` unprocessed): small batches, a list after
   nearly every event, as a deployment that keeps up sees; events per CPU-second, CPU-ms
   per published list, lists and bytes written per event.
6. A list per event: the next events of the users seen so far, the users taken in turn
   (``in_turn``), never more unprocessed than half the users: a batch holds one event per
   user, as when many users are active at once (MovieLens-1M's time order comes in one
   user's bursts). The same figures, bytes written per event by destination.

In phases 5 and 6 the bytes are counted twice: as the worker sent them (keys and values,
before compression: ``streamrec_written_bytes_total``) and as the benchmark's own broker
stored them (its log segments' growth per topic: compressed batches with Kafka's headers,
the events topic left out).

``quick`` (the guard the test suite runs): the catalogue, then the decode-only ceiling and
StreamRec in turn, twice each, on a smaller backlog; the figure is StreamRec's events per
worker CPU-second as a share of the ceiling's (best of two each), which a machine's speed
moves far less than either figure alone. It fails below :data:`QUICK_FLOOR`.

The broker and the worker share this machine's cores with the producer, as they would in
a laptop test; the report says how many cores there were.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer

from app.broker.admin import GroupLag, ensure_topics, wait_until_ready
from app.broker.apache import start_unless_given
from app.broker.embedded import stop_process
from app.contract.records import Recommendation, Search
from app.data import movielens
from app.demo import item_record, rating_records
from app.harness import WorkerRun, flow_control, produce_records, wait_processed
from app.metrics import TABLES, Samples, scrape, total
from app.plots import pyplot
from app.settings import Settings

SEARCH_EVERY = 25  # one search event per 25 rating events, "<genre> films"


def bench_events(count: int) -> list[tuple[bytes, bytes, str]]:
    """(key, value, event id) for the first ratings of MovieLens-1M in time order: every
    rating a view, >= 4 also a purchase, and now and then a genre search."""
    genres = {m.item_id: m.genres for m in movielens.movies("ml-1m")}
    out: list[tuple[bytes, bytes, str]] = []
    for n, rating in enumerate(movielens.ratings("ml-1m")):
        for key, value in rating_records("ml-1m", rating):
            out.append((key, value, msgspec.json.decode(value)["event_id"]))
        if n % SEARCH_EVERY == 0 and genres.get(rating.item_id):
            search = Search(v=1, event_id=f"ml-1m-{rating.row}-search", user_id=rating.user_id,
                            ts=rating.ts_ms, query=f"{genres[rating.item_id][0].lower()} films")
            out.append((rating.user_id.encode(), msgspec.json.encode(search), search.event_id))
        if len(out) >= count:
            break
    return out[:count]


async def _collect(bootstrap: str, topic: str, into: list[Recommendation],
                   stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="latest")
    await consumer.start()
    decode = msgspec.json.Decoder(Recommendation).decode
    try:
        while not stop.is_set():
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                into.extend(decode(m.value) for m in messages if m.value)
    finally:
        await consumer.stop()


async def _drain(lag: GroupLag, ends: dict[tuple[str, int], int], total: int,
                 say: Callable[[str], None]) -> None:
    """Wait until the worker's group has committed everything up to ``ends``."""
    last = -1.0
    while (behind := await lag.lag(ends)) > 0:
        if time.monotonic() - last >= 2.0:
            say(f"  {total - behind:,}/{total:,} committed")
            last = time.monotonic()
        await asyncio.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drain_rate(settings: Settings, group: str, ends: dict[tuple[str, int], int],
                      alive: Callable[[], bool], pid: int, within: float = 900.0
                      ) -> tuple[float, float]:
    """Events/s of ``group`` working off a backlog, and events per CPU-second of its worker
    process (per core it keeps busy): from its first commit to its last, over the records
    committed in between (start-up and group joining excluded)."""
    lag = GroupLag(settings, group)
    await lag.start()
    try:
        total_records = sum(ends.values())
        deadline = time.monotonic() + within
        first: tuple[float, int, float] | None = None
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"the {group} worker exited; see its log")
            done = total_records - await lag.lag(ends)
            now = time.monotonic()
            if first is None and done > 0:
                first = (now, done, cpu_seconds(pid))
            if done >= total_records:
                if first is None or now <= first[0]:
                    return float("nan"), float("nan")
                cpu = cpu_seconds(pid) - first[2]
                return ((done - first[1]) / (now - first[0]),
                        (done - first[1]) / cpu if cpu > 0 else float("nan"))
            await asyncio.sleep(0.05)
        raise TimeoutError(f"group {group} did not finish the backlog")
    finally:
        await lag.close()


async def _pull(base_url: str, users: list[str], rate: float, seconds: float,
                fresh: bool = False) -> dict[str, Any]:
    """Open-loop GET /users/{id}/recommendations at ``rate``/s for ``seconds``: each
    request's latency counts from the moment it was due, so a slow answer delays no later
    request and hides no queueing (no coordinated omission)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    total_requests = int(rate * seconds)
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64)) as session:

        async def one(user: str, due: float) -> None:
            nonlocal errors
            query = "k=10&fresh=true" if fresh else "k=10"
            async with session.get(f"{base_url}/users/{user}/recommendations?{query}"
                                   ) as reply:
                await reply.read()
                if reply.status != 200:
                    errors += 1
            latencies.append((time.perf_counter() - due) * 1000)

        started = time.perf_counter()
        tasks = []
        for n in range(total_requests):
            due = started + n / rate
            ahead = due - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
            tasks.append(asyncio.create_task(one(users[n % len(users)], due)))
        await asyncio.gather(*tasks)
    values = np.array(latencies)
    return {
        "rate_per_second": rate,
        "requests": total_requests,
        "errors": errors,
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
    }


def _histogram_shares(before: Samples, after: Samples,
                      histogram: str = "streamrec_pull_seconds") -> dict[str, float]:
    """Share of a histogram's observations between two scrapes that fell within each of
    its bounds (in ms): pull requests answered inside the worker, by default."""
    def count(samples: Samples, bound: str) -> float:
        return total(samples, f"{histogram}_bucket", le=bound)

    requests = count(after, "+Inf") - count(before, "+Inf")
    bounds = sorted({dict(labels)["le"] for name, labels in after
                     if name == f"{histogram}_bucket"} - {"+Inf"}, key=float)
    return {f"{float(b) * 1000:g}": (count(after, b) - count(before, b)) / max(requests, 1)
            for b in bounds}


def bound_of_share(shares: dict[str, float], share: float) -> float | None:
    """The smallest histogram bound (ms) within which ``share`` of the observations fell
    (``_histogram_shares``' cumulative shares); None when none holds that many."""
    for bound, within in sorted(shares.items(), key=lambda kv: float(kv[0])):
        if within >= share:
            return float(bound)
    return None


def batch_shape(samples: Samples) -> dict[str, float]:
    """How the events agent's work was cut, from a worker's /metrics: its batches, the
    events in them, the time spent on each, and the recommendations published (one per
    user and batch)."""
    batches = total(samples, "streamrec_batch_records_count", topic="events")
    events = total(samples, "streamrec_batch_records_sum", topic="events")
    published = total(samples, "streamrec_recommendations_total")
    busy = total(samples, "streamrec_batch_seconds_sum", topic="events")
    vectors = total(samples, "streamrec_behaviour_vectors_total")
    model_seconds = total(samples, "streamrec_encoder_batch_seconds_sum", purpose="behaviour")
    written = {to: total(samples, "streamrec_written_bytes_total", to=to)
               for to in (*TABLES, "recommendations", "evidence")}
    return {"batches": batches, "events": events, "recommendations": published,
            "bytes_per_event": sum(written.values()) / events if events else float("nan"),
            **{f"bytes_per_event:{to}": size / events if events else float("nan")
               for to, size in written.items()},
            "behaviour_vectors": vectors,
            "behaviour_ms_per_user": 1000 * model_seconds / vectors if vectors else float("nan"),
            "ms_per_batch": 1000 * busy / batches if batches else float("nan"),
            "events_per_batch": events / batches if batches else float("nan"),
            "events_per_recommendation": events / published if published else float("nan")}


def broker_written(before: dict[str, int], after: dict[str, int], events: int,
                   settings: Settings) -> dict[str, float]:
    """Bytes the broker stored per input event between two ``KafkaBroker.topic_bytes``
    snapshots, after compression and with Kafka's batch headers: in total
    (``broker_bytes_per_event``) and by where (``broker_bytes_per_event:<to>``: a table's
    label for its changelog, ``recommendations``, else the topic). The events topic (the
    benchmark's own producer) and the broker's internal topics are left out."""
    grown: dict[str, int] = {}
    for topic, size in after.items():
        delta = size - before.get(topic, 0)
        if delta <= 0 or topic == settings.topic_events or topic.startswith("__"):
            continue
        to = next((table for table in TABLES if topic.endswith(f"-{table}-changelog")),
                  "recommendations" if topic == settings.topic_recommendations else topic)
        grown[to] = grown.get(to, 0) + delta
    if not events:
        return {}
    return {"broker_bytes_per_event": sum(grown.values()) / events,
            **{f"broker_bytes_per_event:{to}": size / events
               for to, size in sorted(grown.items(), key=lambda kv: -kv[1])}}


def shape_line(shape: dict[str, float]) -> str:
    return (f"  {shape['events_per_batch']:,.0f} events per batch "
            f"({shape['ms_per_batch']:,.1f} ms each), "
            f"{shape['events_per_recommendation']:,.1f} per recommendation, "
            f"{shape.get('bytes_per_event', float('nan')):,.0f} bytes written to Kafka "
            "per event")


def own_learning_topics(settings: Settings, job: str) -> dict[str, str]:
    """Each job its own examples and models topics: a job's trainer (a fresh consumer
    group) would otherwise read every example the jobs before it produced (the naive job
    alone sends one per event) and serve their models."""
    return {"topic_examples": f"{settings.topic_examples}-{job}",
            "topic_models": f"{settings.topic_models}-{job}"}


def _start_profiler(run: WorkerRun, target: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the StreamRec worker (100 Hz, collapsed stacks) until stopped."""
    assert run.worker is not None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "--pid", str(run.worker.pid), "--rate", "100",
                             "--format", "raw", "--output", str(target), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _write_profile(spy: subprocess.Popen[bytes], raw: Path, target: Path) -> None:
    spy.send_signal(signal.SIGINT)   # py-spy writes its file on SIGINT only
    await asyncio.to_thread(spy.wait, 60)
    summary = await asyncio.to_thread(summarise_profile, raw)
    await asyncio.to_thread(target.write_text, summary)
    # the collapsed stacks themselves, for a flame graph or a closer look
    await asyncio.to_thread(shutil.copyfile, raw, target.with_suffix(".stacks"))


def summarise_profile(raw: Path, top: int = 25) -> str:
    """Where the worker's time went: the share of samples inside each function (inclusive)
    and at the top of the stack (self), from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    lines = [f"{samples:,} samples", "", "inclusive (% of samples spent inside):"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in
              sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]]
    lines += ["", "self (% of samples at the top of the stack):"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in
              sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines) + "\n"


# Throughput is timed from a group's first commit to the commit that covers the backlog, so
# every variant commits this often here (Faust's default, 2.8 s, would quantise a 15 s run to
# whole commit intervals: earlier runs all read 4,660 events/s whatever the code did)
BENCH_COMMIT_SECONDS = 0.5

INTAKE = "intake alone (StreamRec's, decoding only)"   # below Faust's streams
VARIANTS = {
    # name: (module, settings overrides)
    "faust decode-only ceiling": ("app.worker.ceiling", {}),
    INTAKE: ("app.worker.intake_only", {}),
    "naive (one event at a time)": ("app.cli", {"batch_max": "1"}),
    "quix streams (same job)": ("app.peers.quix_job", {}),
    "streamrec": ("app.cli", {}),
}
WITH_MODEL = "streamrec + behaviour model"
GLOBAL_ITEMS = "streamrec, global item statistics"   # item_stats=global
EXACTLY_ONCE = "streamrec, exactly-once"   # processing_guarantee=exactly_once (transactions)
CEILING = "faust decode-only ceiling"

# The guard's floor: StreamRec's events per CPU-second as a share of the decode-only
# ceiling's, below which `streamrec bench pipeline --quick` (and so `make test`) fails. Set
# at about 60% of the share measured at HEAD (BENCHMARKS.md, "The guard"), so that machine
# noise passes and a 2x regression does not. Move it up when a change makes the pipeline
# cheaper for good, with the runs that show it, in the same commit.
QUICK_FLOOR = 0.5
QUICK_EVENTS = 30_000
QUICK_ROUNDS = 2
LIVE_EVENTS = 30_000   # the live phase: MovieLens-1M's next events in time order ...
LIVE_AHEAD = 2_000     # ... never more than this many ahead of what the worker processed
PER_EVENT_EVENTS = 10_000   # a list per event: the next events of the users seen so far,
PER_EVENT_SOURCE = 300_000  # taken in turn, from this many next events of the stream


def first(variants: dict[str, Any], name: str) -> dict[str, Any]:
    """The same variants with ``name`` timed first."""
    return {name: variants[name], **{k: v for k, v in variants.items() if k != name}}


async def run(events: int, partitions: int, broker: str | None, latency_seconds: float,
              say: Callable[[str], None], pull_rate: float = 500.0,
              pull_seconds: float = 20.0, profile: Path | None = None,
              references: bool = True, profile_paced: bool = False,
              latency_rate: float | None = None,
              behaviour_model: Path | None = None, quick: bool = False,
              live_events: int = LIVE_EVENTS, live_ahead: int = LIVE_AHEAD,
              exactly_once: bool = True, exactly_once_first: bool = False,
              global_items: bool = False, global_items_first: bool = False,
              per_event_events: int = PER_EVENT_EVENTS,
              worker_settings: dict[str, str] | None = None) -> dict[str, Any]:
    """The benchmark (module docstring); with ``behaviour_model``, the StreamRec job is
    timed again serving that model (its latency and pull phases stay without it); with
    ``quick``, the guard only (the ceiling and StreamRec, alternating); with
    ``exactly_once``, StreamRec is timed again with Kafka transactions (before the
    at-least-once job with ``exactly_once_first``: the backlog's second reader may find it
    in the page cache, so an honest ratio takes both orders); with ``global_items``,
    StreamRec is timed again with item_stats=global (first with ``global_items_first``,
    for the same reason), and the latency phase's worker runs it (the global statistics'
    freshness at that load); ``per_event_events``: the length of the last phase, a list per
    event (0 skips it); ``worker_settings``: settings of every worker it starts (name ->
    value)."""
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    broker, local = await start_unless_given(broker, workdir, say)
    run_ = WorkerRun(broker, workdir, partitions, **(worker_settings or {}))
    settings = run_.settings
    succeeded = False
    try:
        await wait_until_ready(settings)
        await ensure_topics(settings)
        run_.start_worker()
        await run_.wait_metric("streamrec_catalogue_items", 0)
        movies = movielens.movies("ml-1m")
        say(f"publishing the MovieLens-1M catalogue ({len(movies):,} items)")
        items = [(*item_record(m, 956_703_932_000), m.item_id) for m in movies]
        await produce_records(broker, settings.topic_items, items, None, {}, {})
        t_catalogue = time.monotonic()
        await run_.wait_metric("streamrec_catalogue_items", len(movies))
        catalogue_seconds = time.monotonic() - t_catalogue
        say(f"  embedded and indexed in {catalogue_seconds:.1f}s")

        run_.stop_worker()  # the catalogue is on its topic; every variant reads it from there
        records = bench_events(events)
        say(f"backlog: producing {len(records):,} events")
        ends: dict[tuple[str, int], int] = {}
        started = await produce_records(broker, settings.topic_events, records, None, {}, ends)
        producer_rate = len(records) / (time.time() - started)
        rates: dict[str, float] = {}
        per_core: dict[str, float] = {}   # events per CPU-second of the worker process
        shape: dict[str, float] = {}      # the StreamRec job's batches and recommendations
        model_shape: dict[str, float] = {}   # the same, serving the behaviour model
        global_shape: dict[str, float] = {}  # the same, with global item statistics
        empty_items = f"{settings.topic_items}-none"  # variants must not re-embed the catalogue
        variants = dict(VARIANTS) if references else {
            name: VARIANTS[name] for name in (CEILING, INTAKE, "streamrec")}
        if behaviour_model is not None:
            variants[WITH_MODEL] = ("app.cli", {"behaviour_model": str(behaviour_model)})
        if global_items:
            variants[GLOBAL_ITEMS] = ("app.cli", {"item_stats": "global"})
            if global_items_first:
                variants = first(variants, GLOBAL_ITEMS)
        if exactly_once:
            variants[EXACTLY_ONCE] = ("app.cli", {"processing_guarantee": "exactly_once"})
            if exactly_once_first:
                variants = first(variants, EXACTLY_ONCE)
        if quick:
            succeeded = True
            return await _quick(run_, ends, say, len(movies), catalogue_seconds,
                                empty_items, workdir)
        for name, (module, overrides) in variants.items():
            group = f"{settings.app_id}-{len(rates)}"
            say(f"{name}: working off the backlog")
            _start_variant(run_, module, overrides, group, empty_items, workdir)
            # the model's and the global statistics' cost: side by side
            suffix = {"streamrec": "", WITH_MODEL: "-model", GLOBAL_ITEMS: "-global"}
            profiled = name in suffix
            target = None if profile is None or not profiled else \
                profile.with_name(f"{profile.stem}{suffix[name]}{profile.suffix}")
            spy = _start_profiler(run_, workdir / f"profile-{name}.txt") \
                if target is not None and profiled else None
            assert run_.worker is not None
            rates[name], per_core[name] = await _drain_rate(settings, group, ends, run_.alive,
                                                            run_.worker.pid)
            if spy is not None and target is not None:
                await _write_profile(spy, workdir / f"profile-{name}.txt", target)
                say(f"  profile: {target}")
            if name == "streamrec":
                shape = batch_shape(await asyncio.to_thread(scrape, run_.metrics_url))
                say(shape_line(shape))
            if name == GLOBAL_ITEMS:
                global_shape = batch_shape(await asyncio.to_thread(scrape, run_.metrics_url))
                say(shape_line(global_shape))
            if name == WITH_MODEL:
                model_shape = batch_shape(await asyncio.to_thread(scrape, run_.metrics_url))
                say(f"{shape_line(model_shape)}; the model: "
                    f"{model_shape['behaviour_ms_per_user']:.2f} ms per user vector")
            run_.stop_worker()
            say(f"  {rates[name]:,.0f} events/s, {per_core[name]:,.0f} per CPU-second")
        throughput = rates["streamrec"]
        run_.start_worker(app_id=f"{settings.app_id}-latency", topic_items=empty_items,
                          data_dir=str(workdir / "latency"),
                          **own_learning_topics(settings, f"{settings.app_id}-latency"),
                          **({"item_stats": "global"} if global_items else {}))
        await run_.wait_metric("streamrec_catalogue_items", len(movies))
        lag = GroupLag(settings, f"{settings.app_id}-latency")
        await lag.start()
        await _drain(lag, ends, len(records), say)  # the latency worker catches up first
        rate = latency_rate or throughput / 2
        paced = bench_events(events + int(rate * latency_seconds))[events:]
        say(f"latency: {len(paced):,} events at {rate:,.0f}/s")
        recs: list[Recommendation] = []
        stop = asyncio.Event()
        collector = asyncio.create_task(_collect(broker, settings.topic_recommendations,
                                                 recs, stop))
        await asyncio.sleep(2.0)
        before = await asyncio.to_thread(scrape, run_.metrics_url)
        sent: dict[str, float] = {}
        ends = {}
        spy = _start_profiler(run_, workdir / "profile-latency.txt") \
            if profile is not None and profile_paced else None
        await produce_records(broker, settings.topic_events, paced, rate, sent, ends)
        await _drain(lag, ends, len(paced), say)
        if spy is not None and profile is not None:
            await _write_profile(spy, workdir / "profile-latency.txt",
                                 profile.with_name(f"{profile.stem}-latency{profile.suffix}"))
        after = await asyncio.to_thread(scrape, run_.metrics_url)
        paced_shape = batch_shape({key: value - before.get(key, 0.0)
                                   for key, value in after.items()})
        say(shape_line(paced_shape))
        freshness: dict[str, Any] = {}
        if global_items:
            shares = _histogram_shares(before, after, "streamrec_item_stats_freshness_seconds")
            freshness = {"within_ms": shares, "p50_ms": bound_of_share(shares, 0.5),
                         "p99_ms": bound_of_share(shares, 0.99)}
            say(f"  global item statistics: p50 within {freshness['p50_ms']} ms, p99 within "
                f"{freshness['p99_ms']} ms of the event")
        await asyncio.sleep(2.0)
        stop.set()
        await collector
        await lag.close()
        latencies = np.array([(r.produced_at / 1000 - sent[r.source_event_id]) * 1000
                              for r in recs if r.source_event_id in sent])
        users = sorted({key.decode() for key, _, _ in records})
        say(f"pull API: GET /users/{{id}}/recommendations at {pull_rate:,.0f}/s "
            f"for {pull_seconds:.0f}s over {len(users):,} users")
        gc.collect()
        gc.freeze()  # the client's own collections must not show up as server latency
        before = await asyncio.to_thread(scrape, run_.metrics_url)
        spy = _start_profiler(run_, workdir / "profile-pull.txt") \
            if profile is not None else None
        pull = await _pull(run_.base_url,
                           users, pull_rate, pull_seconds)
        after = await asyncio.to_thread(scrape, run_.metrics_url)
        if spy is not None and profile is not None:
            await _write_profile(spy, workdir / "profile-pull.txt",
                                 profile.with_name(f"{profile.stem}-pull{profile.suffix}"))
        pull["server_within_ms"] = _histogram_shares(before, after)
        pull["loop_lag_within_ms"] = _histogram_shares(
            before, after, "streamrec_event_loop_lag_seconds")
        pull["gc_pauses"] = {
            g: total(after, "streamrec_gc_pause_seconds_count", generation=g)
            - total(before, "streamrec_gc_pause_seconds_count", generation=g)
            for g in ("0", "1", "2")}
        pull["gc_pause_within_ms"] = _histogram_shares(
            before, after, "streamrec_gc_pause_seconds")
        pull["cache_hits"], pull["cache_stale"] = (
            total(after, "streamrec_pull_cache_total", outcome=outcome)
            - total(before, "streamrec_pull_cache_total", outcome=outcome)
            for outcome in ("hit", "stale"))
        say(f"  p50 {pull['p50_ms']:.1f} ms, p99 {pull['p99_ms']:.1f} ms; again, each "
            "request scored afresh (fresh=true)")
        spy = _start_profiler(run_, workdir / "profile-fresh.txt") \
            if profile is not None else None
        pull_fresh = await _pull(run_.base_url,
                                 users, pull_rate, pull_seconds, fresh=True)
        pull_fresh["server_within_ms"] = _histogram_shares(
            after, await asyncio.to_thread(scrape, run_.metrics_url))
        if spy is not None and profile is not None:
            await _write_profile(spy, workdir / "profile-fresh.txt",
                                 profile.with_name(f"{profile.stem}-fresh{profile.suffix}"))
        sizes = local.topic_bytes if local is not None else None
        live = await _live(run_, events + len(paced), live_events, live_ahead, say,
                           broker_sizes=sizes) if live_events > 0 else {}
        spy = _start_profiler(run_, workdir / "profile-per-event.txt") \
            if profile is not None and per_event_events > 0 else None
        per_event = await _live(run_, events + len(paced) + max(live_events, 0),
                                per_event_events, live_ahead, say, in_turn_=True,
                                broker_sizes=sizes) if per_event_events > 0 else {}
        if spy is not None and profile is not None:
            await _write_profile(
                spy, workdir / "profile-per-event.txt",
                profile.with_name(f"{profile.stem}-per-event{profile.suffix}"))
        succeeded = True
        return {
            "cores": os.cpu_count(),
            "partitions": partitions,
            "catalogue_items": len(movies),
            "catalogue_seconds": catalogue_seconds,
            "events": len(records),
            "events_per_second": throughput,
            "variants_events_per_second": rates,
            "variants_events_per_cpu_second": per_core,
            "variants_order": list(rates),
            "backlog_batches": shape,
            "backlog_batches_with_model": model_shape,
            "backlog_batches_global_items": global_shape,
            "item_stats_freshness": freshness,
            "latency_batches": paced_shape,
            "producer_events_per_second": producer_rate,
            "latency_rate_per_second": rate,
            "latency_events": len(paced),
            "recommendations": len(latencies),
            "latency_ms": {
                "p50": float(np.percentile(latencies, 50)) if latencies.size else None,
                "p90": float(np.percentile(latencies, 90)) if latencies.size else None,
                "p99": float(np.percentile(latencies, 99)) if latencies.size else None,
            },
            "latency_samples_ms": latencies.round(2).tolist(),
            "pull": pull,
            "pull_fresh": pull_fresh,
            "live": live,
            "per_event": per_event,
        }
    finally:
        stop_process(run_.worker, grace=30)
        if local is not None:
            local.stop()
        if succeeded:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"kept {workdir} (broker and worker logs)")


def _start_variant(run_: WorkerRun, module: str, overrides: dict[str, str], group: str,
                   empty_items: str, workdir: Path) -> None:
    """A job's worker on the backlog: a fresh group and data dir, no catalogue to embed
    (it reads the one published), committing every BENCH_COMMIT_SECONDS, its own learning
    topics."""
    run_.start_worker(module, app_id=group, topic_items=empty_items,
                      data_dir=str(workdir / group),
                      commit_interval_seconds=str(BENCH_COMMIT_SECONDS),
                      **own_learning_topics(run_.settings, group), **overrides)


def in_turn(records: Sequence[tuple[bytes, bytes, str]], users: set[bytes], count: int
            ) -> list[tuple[bytes, bytes, str]]:
    """The first ``count`` of ``records`` by ``users`` with the users taken in turn: each
    user's next record, then the next user's, ... (each user's records keep their order).
    A batch of fewer events than there are users then holds one event per user, as when
    many users are active at once: a list per event."""
    queues: dict[bytes, list[tuple[bytes, bytes, str]]] = {}
    for record in records:
        if record[0] in users:
            queues.setdefault(record[0], []).append(record)
    turns = list(queues.values())
    out: list[tuple[bytes, bytes, str]] = []
    depth = 0
    while turns and len(out) < count:
        out.extend(queue[depth] for queue in turns)
        depth += 1
        turns = [queue for queue in turns if len(queue) > depth]
    return out[:count]


async def _live(run_: WorkerRun, start: int, count: int, ahead: int,
                say: Callable[[str], None], in_turn_: bool = False,
                broker_sizes: Callable[[], dict[str, int]] | None = None) -> dict[str, Any]:
    """The live regime: the warm latency worker is sent MovieLens-1M's next ``count`` events
    in time order, as fast as it keeps up (never more than ``ahead`` unprocessed), so its
    batches stay small and nearly every user's event is followed by a list. What one
    worker sustains there, per CPU-second and per list. ``in_turn_``: the events with
    their users taken in turn (``in_turn``): a list per event. With ``broker_sizes`` (the
    benchmark's own broker), the bytes it stored meanwhile too (``broker_written``)."""
    settings = run_.settings
    if in_turn_:   # the users seen so far (their state is in the worker), in turn
        stream = bench_events(start + PER_EVENT_SOURCE)
        records = in_turn(stream[start:], {key for key, _, _ in stream[:start]}, count)
        ahead = min(ahead, max(1, len({key for key, _, _ in records}) // 2))
    else:   # (fewer ahead than users: a batch holds one event per user)
        records = bench_events(start + count)[start:]
    users = len({key for key, _, _ in records})
    assert run_.worker is not None
    say(f"{'a list per event' if in_turn_ else 'live'}: {len(records):,} events "
        f"{f'of {users:,} users taken in turn' if in_turn_ else 'in time order'}, at most "
        f"{ahead:,} ahead of the worker")
    before = await asyncio.to_thread(scrape, run_.metrics_url)
    stored = broker_sizes() if broker_sizes is not None else {}
    already = total(before, "streamrec_input_records_total", topic="events")
    cpu_before = cpu_seconds(run_.worker.pid)
    started = time.monotonic()
    await produce_records(settings.bootstrap_servers(), settings.topic_events, records, None,
                          {}, {}, gate=flow_control(run_, ahead, already), linger_ms=2)
    await wait_processed(run_, len(records), already, poll=0.1)
    seconds = time.monotonic() - started
    cpu = cpu_seconds(run_.worker.pid) - cpu_before
    after = await asyncio.to_thread(scrape, run_.metrics_url)
    shape = batch_shape({key: value - before.get(key, 0.0) for key, value in after.items()})
    lists = shape["recommendations"]
    report = {"events": len(records), "users": users, "ahead": ahead, "seconds": seconds,
              "events_per_second": len(records) / seconds,
              "events_per_cpu_second": len(records) / cpu if cpu > 0 else float("nan"),
              "cpu_ms_per_list": 1000 * cpu / lists if lists else float("nan"),
              "lists_per_event": lists / len(records),
              "batches": shape,
              **(broker_written(stored, broker_sizes(), len(records), settings)
                 if broker_sizes is not None else {})}
    say(f"{shape_line(shape)}\n  {report['events_per_second']:,.0f} events/s, "
        f"{report['events_per_cpu_second']:,.0f} per CPU-second, "
        f"{report['cpu_ms_per_list']:.2f} CPU-ms per list, "
        f"{report['lists_per_event']:.2f} lists per event"
        + (f", {report['broker_bytes_per_event']:,.0f} bytes stored by the broker per event"
           if "broker_bytes_per_event" in report else ""))
    return report


async def _quick(run_: WorkerRun, ends: dict[tuple[str, int], int],
                 say: Callable[[str], None], items: int, catalogue_seconds: float,
                 empty_items: str, workdir: Path) -> dict[str, Any]:
    """The guard: the ceiling and StreamRec work off the same backlog in turn,
    :data:`QUICK_ROUNDS` times each, each pass with a fresh group; best of each."""
    settings = run_.settings
    per_core: dict[str, list[float]] = {CEILING: [], "streamrec": []}
    rates: dict[str, list[float]] = {CEILING: [], "streamrec": []}
    for round_ in range(QUICK_ROUNDS):
        for name in (CEILING, "streamrec"):
            module, overrides = VARIANTS[name]
            group = f"{settings.app_id}-q{round_}-{len(rates[name])}-{name.split()[0]}"
            _start_variant(run_, module, overrides, group, empty_items, workdir)
            assert run_.worker is not None
            rate, cpu = await _drain_rate(settings, group, ends, run_.alive, run_.worker.pid)
            run_.stop_worker()
            rates[name].append(rate)
            per_core[name].append(cpu)
            say(f"  round {round_ + 1}/{QUICK_ROUNDS}, {name}: {rate:,.0f} events/s, "
                f"{cpu:,.0f} per CPU-second")
    best = {name: max(values) for name, values in per_core.items()}
    ratio = best["streamrec"] / best[CEILING]
    return {
        "quick": True,
        "cores": os.cpu_count(),
        "partitions": settings.partitions,
        "catalogue_items": items,
        "catalogue_seconds": catalogue_seconds,
        "events": sum(ends.values()),
        "rounds": QUICK_ROUNDS,
        "variants_events_per_second": {n: max(v) for n, v in rates.items()},
        "variants_events_per_cpu_second": best,
        "runs_events_per_cpu_second": per_core,
        "ceiling_ratio": ratio,
        "floor": QUICK_FLOOR,
        "passed": bool(ratio >= QUICK_FLOOR),
    }


def quick_markdown(report: dict[str, Any]) -> str:
    best = report["variants_events_per_cpu_second"]
    runs = report["runs_events_per_cpu_second"]
    verdict = "pass" if report["passed"] else "FAIL"
    return "\n".join([
        f"{report['cores']} cores; {report['partitions']} partitions; a backlog of "
        f"{report['events']:,} events, worked off {report['rounds']} times by each job in "
        "turn.",
        "",
        "| job | events per worker CPU-second (best) | each run |",
        "| --- | ---: | --- |",
        *[f"| {name} | {best[name]:,.0f} | "
          + ", ".join(f"{v:,.0f}" for v in runs[name]) + " |" for name in best],
        "",
        f"StreamRec / decode-only ceiling per CPU-second: **{report['ceiling_ratio']:.3f}** "
        f"(floor {report['floor']:.2f}): {verdict}",
    ]) + "\n"


def markdown(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    pull = report["pull"]
    ceiling = report["variants_events_per_second"].get("faust decode-only ceiling",
                                                       float("nan"))
    return "\n".join([
        f"{report['cores']} cores shared by Kafka, one worker and the producer; "
        f"{report['partitions']} partitions; {report['catalogue_items']:,} items.",
        "",
        "| one worker working off a backlog of "
        f"{report['events']:,} events | events/s | x decode-only | events per CPU-second "
        "of the worker |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {name} | {rate:,.0f} | {rate / ceiling:.2f} | "
          f"{report.get('variants_events_per_cpu_second', {}).get(name, float('nan')):,.0f} |"
          for name, rate in report["variants_events_per_second"].items()],
        "",
        *([f"Serving the behaviour model, StreamRec works off the backlog at "
           f"{rates[WITH_MODEL] / rates['streamrec']:.2f} x its rate without it; the "
           "model's onnxruntime calls cost "
           f"{report['backlog_batches_with_model']['behaviour_ms_per_user']:.2f} ms per user "
           "vector, batched.", ""]
          if WITH_MODEL in (rates := report["variants_events_per_second"]) else []),
        *([f"With global item statistics, StreamRec works off the backlog at "
           f"{rates[GLOBAL_ITEMS] / rates['streamrec']:.2f} x its rate with per-worker "
           f"ones ({cpu[GLOBAL_ITEMS] / cpu['streamrec']:.2f} x per CPU-second); it writes "
           f"{report['backlog_batches_global_items']['bytes_per_event:evidence']:,.0f} "
           "bytes of evidence and "
           f"{report['backlog_batches_global_items']['bytes_per_event:item-stats']:,.0f} "
           "of snapshot entries per event; at the latency load every worker's graph holds an "
           f"event within {report['item_stats_freshness']['p50_ms']} ms (p50), "
           f"{report['item_stats_freshness']['p99_ms']} ms (p99), the latency worker "
           "running them.", ""]
          if GLOBAL_ITEMS in rates
          and GLOBAL_ITEMS in (cpu := report["variants_events_per_cpu_second"]) else []),
        *([f"With exactly-once processing (Kafka transactions, committed every "
           f"{BENCH_COMMIT_SECONDS} s here), StreamRec works off the backlog at "
           f"{rates[EXACTLY_ONCE] / rates['streamrec']:.2f} x its at-least-once rate "
           f"({cpu[EXACTLY_ONCE] / cpu['streamrec']:.2f} x per CPU-second).", ""]
          if EXACTLY_ONCE in rates
          and EXACTLY_ONCE in (cpu := report["variants_events_per_cpu_second"]) else []),
        "| measure | value |",
        "| --- | ---: |",
        f"| catalogue embedded and indexed | {report['catalogue_seconds']:.1f} s |",
        *[f"| {what}: events per batch / per recommendation | "
          f"{report[key]['events_per_batch']:,.0f} / "
          f"{report[key]['events_per_recommendation']:,.1f} |"
          for what, key in (("StreamRec's backlog", "backlog_batches"),
                            ("latency load", "latency_batches")) if report.get(key)],
        *[f"| {what}: bytes written to Kafka per input event (changelogs + outputs) | "
          f"{report[key]['bytes_per_event']:,.0f} ("
          + ", ".join(f"{name.partition(':')[2]} {value:,.0f}"
                      for name, value in report[key].items()
                      if name.startswith("bytes_per_event:")) + ") |"
          for what, key in (("StreamRec's backlog", "backlog_batches"),
                            ("latency load", "latency_batches"))
          if "bytes_per_event" in report.get(key, {})],
        f"| producer alone, events/s | {report['producer_events_per_second']:,.0f} |",
        f"| latency load | {report['latency_rate_per_second']:,.0f} events/s |",
        f"| event -> recommendation p50 | {lat['p50']:.1f} ms |",
        f"| event -> recommendation p90 | {lat['p90']:.1f} ms |",
        f"| event -> recommendation p99 | {lat['p99']:.1f} ms |",
        f"| recommendations measured | {report['recommendations']:,} |",
        *([f"| live regime ({live['events']:,} events in time order, at most "
           f"{live['ahead']:,} ahead): events/s / per worker CPU-second | "
           f"{live['events_per_second']:,.0f} / {live['events_per_cpu_second']:,.0f} |",
           f"| live regime: CPU-ms per published list / lists per event / bytes written "
           f"per event | {live['cpu_ms_per_list']:.2f} / {live['lists_per_event']:.2f} / "
           f"{live['batches']['bytes_per_event']:,.0f} |"]
          if (live := report.get("live")) else []),
        *([f"| a list per event ({each['events']:,} events of {each['users']:,} users taken "
           f"in turn, at most {each['ahead']:,} ahead): events/s / per worker CPU-second | "
           f"{each['events_per_second']:,.0f} / {each['events_per_cpu_second']:,.0f} |",
           f"| a list per event: CPU-ms per published list / lists per event / bytes "
           f"written per event ({_by_destination(each['batches'])}) | "
           f"{each['cpu_ms_per_list']:.2f} / {each['lists_per_event']:.2f} / "
           f"{each['batches']['bytes_per_event']:,.0f} |"]
          if (each := report.get("per_event")) else []),
        *[f"| {what}: bytes the broker stored per input event, compressed "
          f"({_by_destination(phase, 'broker_bytes_per_event:')}) | "
          f"{phase['broker_bytes_per_event']:,.0f} |"
          for what, phase in (("live regime", report.get("live") or {}),
                              ("a list per event", report.get("per_event") or {}))
          if "broker_bytes_per_event" in phase],
        f"| pull API at {pull['rate_per_second']:,.0f} req/s: p50 / p99 / max | "
        f"{pull['p50_ms']:.1f} / {pull['p99_ms']:.1f} / {pull['max_ms']:.1f} ms "
        f"({pull['requests']:,} requests, {pull['errors']} errors) |",
        *(_pull_rows(pull, "") if "server_within_ms" in pull else []),
        *(_pull_rows(report["pull_fresh"], ", scored afresh (fresh=true)")
          if "pull_fresh" in report else []),
    ]) + "\n"


def _by_destination(shape: dict[str, Any], prefix: str = "bytes_per_event:") -> str:
    """Bytes per event by destination, largest first ("user-state 700, ...")."""
    parts = sorted(((k.split(":", 1)[1], v) for k, v in shape.items()
                    if k.startswith(prefix) and v > 0), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {value:,.0f}" for name, value in parts)


def _pull_rows(pull: dict[str, Any], what: str) -> list[str]:
    rows = []
    if what:
        rows.append(f"| pull API at {pull['rate_per_second']:,.0f} req/s{what}: p50 / p99 / max | "
                    f"{pull['p50_ms']:.1f} / {pull['p99_ms']:.1f} / {pull['max_ms']:.1f} ms |")
    elif "cache_hits" in pull:
        asked, stale = max(pull["requests"], 1), pull.get("cache_stale", 0)
        rows.append(f"| pull API: answered from the user's latest list (of which expired, "
                    f"scored again after the answer) | "
                    f"{100 * (pull['cache_hits'] + stale) / asked:.1f}% "
                    f"({100 * stale / asked:.1f}%) |")
    within = pull["server_within_ms"]
    rows.append(f"| pull API{what}: answered inside the worker within 1 / 2 / 5 ms | "
                + " / ".join(f"{100 * within.get(b, float('nan')):.1f}%" for b in ("1", "2", "5"))
                + " |")
    if "loop_lag_within_ms" in pull:
        lag = pull["loop_lag_within_ms"]
        rows.append(f"| pull API{what}: worker's event loop late by at most 5 / 20 / 50 ms | "
                    + " / ".join(f"{100 * lag.get(b, float('nan')):.1f}%"
                                 for b in ("5", "20", "50")) + " of probes |")
    return rows


def plot(report: dict[str, Any], target: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    samples = report["latency_samples_ms"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(samples, bins=60, color="#3b75af")
    for name in ("p50", "p99"):
        ax.axvline(report["latency_ms"][name], color="black", linestyle="--", linewidth=1)
        ax.text(report["latency_ms"][name], ax.get_ylim()[1] * 0.9, f" {name}", fontsize=8)
    ax.set_xlabel("event -> recommendation (ms)")
    ax.set_ylabel("recommendations")
    ax.set_title(f"at {report['latency_rate_per_second']:,.0f} events/s")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return True
