"""`streamrec replay`: a dataset streamed through the real pipeline.

A real broker, a real worker process (the same `streamrec worker` users run) and the real
encoder. The catalogue is published first and the run waits until the worker has embedded
and indexed it; then the split's stream (every rating a `view`, ratings >= 4 also a
`purchase`; targets withheld, see :mod:`app.evaluation.split`) is produced in order, either
paced at ``rate`` events/s or as fast as the worker accepts: the producer keeps at most
``window`` events ahead of what the worker has processed (read from its /metrics), so the
latencies measured are the pipeline's, not those of a backlog the producer built up.

Every recommendation published is read back; the last one each user received is what
`streamrec eval` scores. Once the whole stream is processed, each user's list is also asked
of the same worker through its pull API (``GET /users/{id}/recommendations?fresh=1``): by
then it has learnt from every rating but the targets, other users' later ratings included,
which is the protocol of the offline baselines and of published offline numbers (the
*end of stream* lists). Nothing is scored here.

The ``feedback`` variant also simulates users reacting to what they were shown: when the
item a user rates next is among the top ``SHOWN`` items of the list published after their
previous rating, a click on it is produced to the feedback topic (the rest of the list was
seen and passed over). Users are split by the worker's A/B experiment: the learning half is
served what the trainer learns from those clicks, the frozen half the defaults. Clicks are
produced as soon as the list is read back, so the trainer may learn from a click up to the
producer's window (a few thousand events) before the stream reaches it; a user's last
rating (the target) never causes a click.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.broker.admin import ensure_topics, wait_until_ready
from app.contract.records import Feedback, FeedbackType, Recommendation
from app.core.experiments import Experiment, variant_of
from app.demo import rating_records
from app.evaluation.split import Split, catalogue_records, profile_records
from app.harness import WorkerRun, flow_control, produce_records, wait_processed
from app.metrics import total

VARIANTS = {
    # name: candidate sources (StreamRec settings), for the ablations
    "streamrec": "encoder,covisit,popular,trending",
    "frozen": "encoder,covisit,popular,trending",
    "no-encoder": "covisit,popular,trending",
    "no-covisit": "encoder,popular,trending",
    "feedback": "encoder,covisit,popular,trending",  # simulated clicks and the A/B split
    # with the behaviour model (`streamrec train`): beside the ranker's signals, and alone
    "sequence": "encoder,covisit,popular,sequence,trending",
    "sequence-only": "sequence",
    # the same as `sequence`, the model trained from the stream during the replay
    # (`streamrec train --stream`, a round every StreamTraining.every events)
    "sequence-stream": "encoder,covisit,popular,sequence,trending",
    # the time-aware ranker's ablation: a returning user ranked as if they never left
    "no-trending": "encoder,covisit,popular",
}
SEQUENCE_VARIANTS = frozenset({"sequence", "sequence-only"})
"""Variants serving a model trained offline on the whole stream: no online figure."""
STREAM_TRAINED = "sequence-stream"
# who is served what the online learner learns (the worker's A/B experiment): everyone,
# except in `frozen` and the behaviour model's variants (nobody: the documented defaults,
# the reference the feedback run's halves are paired with) and `feedback` (the worker's
# default split, half and half)
EXPERIMENTS = {"frozen": "frozen=1", "no-trending": "frozen=1",
               "feedback": "frozen=0.5,learning=0.5",
               "sequence": "frozen=1", "sequence-only": "frozen=1",
               "sequence-stream": "frozen=1"}
LEARNING_FOR_ALL = "learning=1"
# the share of item events the learner learns from (STREAMREC_BEHAVIOUR_SAMPLE: off by
# default in a worker, for its cost in throughput; docs/feedback.md)
BEHAVIOUR_SAMPLE = "0.02"
# co-visitation neighbours kept per item (STREAMREC_COVISIT_EDGES: 100 by default in a
# worker; 300 doubles what the learner gains and costs the pull API's p99, BENCHMARKS.md)
COVISIT_EDGES = 300
# the share of lists also ranked at every scale of the behaviour model's weight, for the
# worker's online choice of it (STREAMREC_BEHAVIOUR_SCALE_SAMPLE: 0.5 by default; a replay
# streams as fast as the worker takes events, a list per ~50 of them, so every list counts)
SCALE_SAMPLE = "1"
FEEDBACK_VARIANTS = frozenset({"feedback"})
SHOWN = 10                # the top of a list a simulated user looks at
CURVE_POINTS = 20         # the learning curve: click-through per twentieth of the lists


@dataclass
class ReplayRun:
    dataset: str
    variant: str
    sources: str
    k: int
    events: int
    seconds: float
    events_per_second: float
    recommendations: int
    lists: dict[str, list[str]] = field(default_factory=dict)   # last list per user
    explanation_kinds: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    # the feedback variant: A/B assignment, and per list read back (in order) its variant
    # index, whether it was clicked and its model version's index in ``versions``
    experiment: dict[str, Any] = field(default_factory=dict)
    user_variants: dict[str, str] = field(default_factory=dict)
    shown_log: list[tuple[int, int, int]] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    # the worker's GET /model at the end, and its behaviour examples by outcome
    model: dict[str, Any] = field(default_factory=dict)
    # every run: per user, [lists answering an event that has a next rating, of them those
    # whose top SHOWN held it] (a simulated click in the feedback run; a hit everywhere):
    # the per-user click-through the A/B pairs across runs
    hits: dict[str, list[int]] = field(default_factory=dict)
    # per user, the list the worker gave when asked after the whole stream (the offline
    # protocol: every rating but the targets learnt); empty in runs recorded before it
    end_lists: dict[str, list[str]] = field(default_factory=dict)
    # the behaviour model the worker served (its manifest's version and training result);
    # empty: none
    behaviour_model: dict[str, Any] = field(default_factory=dict)
    # user profiles the worker accepted before the stream (0 in runs recorded before them)
    profiles: int = 0
    # worker processes in the consumer group
    workers: int = 1
    # where co-visitation and popularity came from: "local" (each worker's own partitions'
    # events) or "global" (every worker's, merged by item: STREAMREC_ITEM_STATS)
    item_stats: str = "local"

    @property
    def name(self) -> str:
        """The run's name in reports: its variant, how many workers when more than one,
        and whether its item statistics were global."""
        scope = ", global item statistics" if self.item_stats == "global" else ""
        many = f" x{self.workers} workers" if self.workers > 1 else ""
        return f"{self.variant}{many}{scope}" if many or scope else self.variant

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        scope = "-global" if self.item_stats == "global" else ""
        many = f"-x{self.workers}" if self.workers > 1 else ""
        path = folder / f"{self.variant}{scope}{many}.json"
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, path: Path) -> ReplayRun:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class StreamTraining:
    """How the `sequence-stream` variant trains its model during the replay: the producer
    stops every ``every`` events, waits until the worker has processed them, runs one
    round of `streamrec train --stream` (its first ``first_epochs``, then
    ``update_epochs``, warm) and, when the round publishes, waits until the worker serves
    the new version. A list is thus made by a model trained on events up to ``every``
    events older than it (its staleness), never on the rating it is scored on. After the
    last events a final round runs before the end-of-stream lists are asked."""

    every: int = 150_000
    first_epochs: int = 10
    update_epochs: int = 2
    seed: int = 0


def stream_records(split: Split) -> list[tuple[bytes, bytes, str]]:
    """(key, value, event id) of the split's stream, in order."""
    out: list[tuple[bytes, bytes, str]] = []
    for rating in split.stream:
        records = rating_records(split.dataset, rating)
        ids = [f"{split.dataset}-{rating.row}-view", f"{split.dataset}-{rating.row}-purchase"]
        pairs = zip(records, ids, strict=False)  # a view, and a purchase for rating >= 4
        out.extend((key, value, event_id) for (key, value), event_id in pairs)
    return out


def _model_of(base_url: str) -> dict[str, Any]:
    """The worker's GET /model: the learning variant's head and checkpoints."""
    url = base_url + "/model"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our worker
        result: dict[str, Any] = json.loads(response.read())
    return result


def pull_lists(base_url: str, users: Sequence[str], k: int, workers: int = 4,
               progress: Callable[[int, int, float], None] | None = None,
               at: Mapping[str, int] | None = None) -> dict[str, list[str]]:
    """Each user's list, freshly computed by the worker (its pull API), a few at a time;
    for the event time ``at[user]`` when given (else the worker's clock)."""

    def one(user: str) -> tuple[str, list[str]]:
        url = f"{base_url}/users/{urllib.parse.quote(user)}/recommendations?k={k}&fresh=1"
        if at is not None and user in at:
            url += f"&at={at[user]}"
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - our worker
            body = json.loads(response.read())
        return user, [item["item_id"] for item in body["items"]]

    out: dict[str, list[str]] = {}
    began = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        for user, items in pool.map(one, users):
            out[user] = items
            if progress and (len(out) % 200 == 0 or len(out) == len(users)):
                progress(len(out), len(users), time.monotonic() - began)
    return out


def asked_at(split: Split) -> dict[str, int]:
    """When each target user's end-of-stream list is asked for (event time). Leave-last-out
    asks for the very next item after a user's history, whenever the rest of the stream
    ended: the list is asked at the user's last streamed rating (a user is never away). The
    global time split asks every returning user at the cut."""
    if split.cut_ms is not None:
        return dict.fromkeys(split.targets, split.cut_ms)
    last = {rating.user_id: rating.ts_ms for rating in split.stream}
    return {user: last[user] for user in split.targets if user in last}


def next_ratings(split: Split) -> dict[str, tuple[str, int]]:
    """For each streamed event id, the item and time of the same user's next streamed
    rating (a user's last streamed rating has none: what follows it is the target)."""
    following: dict[str, tuple[str, int]] = {}
    previous: dict[str, str] = {}
    for rating in split.stream:
        base = previous.get(rating.user_id)
        if base is not None:
            for suffix in ("view", "purchase"):
                following[f"{base}-{suffix}"] = (rating.item_id, rating.ts_ms)
        previous[rating.user_id] = f"{split.dataset}-{rating.row}"
    return following


class _Collector:
    """Reads the recommendations topic from the start; keeps each user's last list and
    whether each list's top held the user's next rated item; with ``react`` set, clicks for
    the simulated users (see the module's docstring)."""

    def __init__(self, bootstrap: str, topic: str, sent: dict[str, float],
                 following: dict[str, tuple[str, int]],
                 react: _Reactions | None = None) -> None:
        self._bootstrap, self._topic, self._sent = bootstrap, topic, sent
        self._following = following
        self.hits: dict[str, list[int]] = {}
        self.lists: dict[str, list[str]] = {}
        self.kinds: dict[str, int] = {}
        self.latency_ms: list[float] = []
        self.count = 0
        self.stop = asyncio.Event()
        self.react = react

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(self._topic, bootstrap_servers=self._bootstrap,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=8 * 1024 * 1024)
        decode = msgspec.json.Decoder(Recommendation).decode
        await consumer.start()
        if self.react is not None:
            await self.react.start()
        try:
            while not self.stop.is_set():
                for messages in (await consumer.getmany(timeout_ms=200,
                                                        max_records=2000)).values():
                    for message in messages:
                        if message.value:
                            await self._take(decode(message.value))
        finally:
            await consumer.stop()
            if self.react is not None:
                await self.react.stop()

    async def _take(self, rec: Recommendation) -> None:
        self.count += 1
        self.lists[rec.user_id] = [item.item_id for item in rec.items]
        for item in rec.items[:10]:
            kind = item.explanation.kind
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        sent = self._sent.get(rec.source_event_id)
        if sent is not None:
            self.latency_ms.append((rec.produced_at / 1000 - sent) * 1000)
        following = self._following.get(rec.source_event_id)
        shown = [item.item_id for item in rec.items[:SHOWN]]
        hit = following is not None and following[0] in shown
        if following is not None:
            counts = self.hits.setdefault(rec.user_id, [0, 0])
            counts[0] += 1
            counts[1] += int(hit)
        if self.react is not None:
            await self.react.take(rec, shown, following if hit else None)


class _Reactions:
    """Simulated users: a click when the next rated item is in the top of the list."""

    def __init__(self, bootstrap: str, topic: str, experiment: Experiment) -> None:
        self._bootstrap, self._topic = bootstrap, topic
        self._experiment = experiment
        self.variants = list(experiment.shares)
        self.user_variants: dict[str, str] = {}
        self.log: list[tuple[int, int, int]] = []
        self.versions: dict[str, int] = {}
        self._producer: AIOKafkaProducer | None = None
        self._encode = msgspec.json.Encoder().encode

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, linger_ms=5)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def take(self, rec: Recommendation, shown: list[str],
                   clicked: tuple[str, int] | None) -> None:
        """``clicked``: the user's next rating (item, time) when it is among ``shown``."""
        variant = self.user_variants.setdefault(
            rec.user_id, variant_of(self._experiment, rec.user_id))
        version = self.versions.setdefault(rec.model_version, len(self.versions))
        self.log.append((self.variants.index(variant), int(clicked is not None), version))
        if clicked is not None and self._producer is not None:
            feedback = Feedback(v=1, type=FeedbackType.CLICK, event_id=f"click-{rec.rec_id}",
                                user_id=rec.user_id, rec_id=rec.rec_id,
                                item_id=clicked[0], ts=clicked[1],
                                position=shown.index(clicked[0]))
            await self._producer.send(self._topic, self._encode(feedback),
                                      key=rec.user_id.encode())


async def replay(split: Split, broker: str, workdir: Path, variant: str, k: int = 50,
                 rate: float | None = None, window: int = 5_000, partitions: int = 4,
                 say: Callable[[str], None] = print,
                 progress: Callable[[int, int, float], None] | None = None,
                 pull_progress: Callable[[int, int, float], None] | None = None,
                 behaviour_model: Path | None = None,
                 training: StreamTraining | None = None, workers: int = 1,
                 item_stats: str = "local") -> ReplayRun:
    """Stream ``split`` through a fresh worker (its own topics and group; or ``workers``
    of them sharing the partitions, with ``item_stats`` local or global) and collect what
    it published; the ``sequence`` variants' worker serves ``behaviour_model``."""
    served: dict[str, Any] = {}
    extra: dict[str, str] = {"item_stats": item_stats}
    if variant in SEQUENCE_VARIANTS:
        if behaviour_model is None or not (behaviour_model / "manifest.json").exists():
            raise FileNotFoundError(
                f"the {variant} variant needs a model exported by `streamrec train` "
                f"(no manifest.json in {behaviour_model})")
        manifest = json.loads((behaviour_model / "manifest.json").read_text())
        served = {"folder": str(behaviour_model), "version": manifest["version"],
                  "config": manifest["config"], "result": manifest.get("result", {})}
        extra["behaviour_model"] = str(behaviour_model)
    if variant in SEQUENCE_VARIANTS or variant == STREAM_TRAINED:
        extra["behaviour_scale_sample"] = SCALE_SAMPLE
    if workers > 1 and variant == STREAM_TRAINED:
        raise ValueError("the sequence-stream variant runs one worker")
    run = WorkerRun(broker, workdir / variant, partitions, name="replay",
                    recommendation_size=str(k), candidate_sources=VARIANTS[variant],
                    shown_items=str(SHOWN),
                    experiment_variants=EXPERIMENTS.get(variant, LEARNING_FOR_ALL),
                    behaviour_sample=BEHAVIOUR_SAMPLE, covisit_edges=str(COVISIT_EDGES),
                    **extra).with_workers(workers)
    settings = run.settings
    await wait_until_ready(settings)
    await ensure_topics(settings)
    run.start_worker()
    if workers > 1:   # every member holds its share before anything is produced
        await run.wait_ready()
    sent: dict[str, float] = {}
    experiment = settings.ab_test()
    react = (_Reactions(broker, settings.topic_feedback, experiment)
             if variant in FEEDBACK_VARIANTS else None)
    collector = _Collector(broker, settings.topic_recommendations, sent, next_ratings(split),
                           react)
    collecting = asyncio.create_task(collector.run())
    try:
        await run.wait_metric("streamrec_catalogue_items", 0)
        first_ts = split.stream[0].ts_ms if split.stream else 0
        items = catalogue_records(split, first_ts)
        await produce_records(broker, settings.topic_items, items, None, {}, {})
        began = time.monotonic()
        await run.wait_metric("streamrec_catalogue_items", len(items), every=True)
        say(f"{variant}: catalogue of {len(items):,} items embedded and indexed in "
            f"{time.monotonic() - began:.1f}s")
        profiles = profile_records(split, first_ts)
        if profiles:
            await produce_records(broker, settings.topic_users, profiles, None, {}, {})
            await run.wait_metric("streamrec_input_records_total", len(profiles),
                                  topic="users")
            say(f"{variant}: {len(profiles):,} user profiles applied")
        records = stream_records(split)
        began = time.monotonic()
        if variant == STREAM_TRAINED:
            rounds = await _stream_trained(run, records, rate, sent, window, training
                                           or StreamTraining(), workdir / variant, say,
                                           progress, began)
            served = {"stream_rounds": rounds, "training": asdict(
                training or StreamTraining()), **({"version": rounds[-1].get("published")
                                                   or rounds[-1].get("served")}
                                                  if rounds else {})}
            training_seconds = sum(r["wall_seconds"] for r in rounds)
        else:
            await produce_records(broker, settings.topic_events, records, rate, sent, {},
                                  gate=flow_control(run, window), progress=progress,
                                  linger_ms=2)
            await wait_processed(run, len(records), progress=progress, began=began)
            training_seconds = 0.0
        seconds = time.monotonic() - began - training_seconds
        published = await asyncio.to_thread(run.total, "streamrec_recommendations_total")
        deadline = time.monotonic() + 120
        while collector.count < published and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        model = await asyncio.to_thread(_model_of, run.base_url)
        final = await asyncio.to_thread(run.samples)
        model["behaviour_examples"] = {
            outcome: total(final, "streamrec_behaviour_examples_total", outcome=outcome)
            for outcome in ("learnt", "not_a_candidate")}
        model["projection_pairs"] = total(final, "streamrec_projection_pairs_total")
        profiles_accepted = round(total(final, "streamrec_input_records_total",
                                        topic="users", outcome="accepted"))
        began = time.monotonic()
        end_lists = await asyncio.to_thread(pull_lists, run.base_url, list(split.targets),
                                            k, progress=pull_progress, at=asked_at(split))
        say(f"{variant}: {len(end_lists):,} users' lists asked at the end of the stream in "
            f"{time.monotonic() - began:.1f}s")
    finally:
        collector.stop.set()
        await collecting
        run.stop_worker()
    return ReplayRun(
        dataset=split.dataset, variant=variant, sources=VARIANTS[variant], k=k,
        events=len(records), seconds=seconds, events_per_second=len(records) / seconds,
        recommendations=collector.count, lists=collector.lists,
        explanation_kinds=collector.kinds,
        latency_ms=np.round(np.array(collector.latency_ms), 2).tolist(),
        experiment={"name": experiment.name, "shares": dict(experiment.shares)}
        if react else {},
        user_variants=react.user_variants if react else {},
        shown_log=react.log if react else [],
        versions=list(react.versions) if react else [],
        model=model,
        hits=collector.hits,
        end_lists=end_lists,
        behaviour_model=served,
        profiles=profiles_accepted,
        workers=workers, item_stats=item_stats,
    )


def _of_all(progress: Callable[[int, int, float], None] | None, offset: int, total: int
            ) -> Callable[[int, int, float], None] | None:
    """``progress`` of a part told as progress over the whole stream."""
    if progress is None:
        return None
    return lambda done, _of, seconds: progress(offset + done, total, seconds)


async def _stream_trained(run: WorkerRun, records: list[tuple[bytes, bytes, str]],
                          rate: float | None, sent: dict[str, float], window: int,
                          training: StreamTraining, workdir: Path,
                          say: Callable[[str], None],
                          progress: Callable[[int, int, float], None] | None,
                          began: float) -> list[dict[str, Any]]:
    """Produce ``records`` in parts of ``training.every``, a trainer round after each
    (StreamTraining); the rounds' records, each with its wall-clock seconds."""
    import sys

    settings = run.settings
    command = [sys.executable, "-m", "app.cli", "train", "--stream", "--rounds", "1",
               "--out", str(workdir / "trainer"), "--epochs", str(training.first_epochs),
               "--update-epochs", str(training.update_epochs), "--seed", str(training.seed),
               "--interval", "1e9"]
    rounds: list[dict[str, Any]] = []
    for start in range(0, len(records), training.every):
        part = records[start:start + training.every]
        await produce_records(run.env["STREAMREC_BROKER_URL"], settings.topic_events, part,
                              rate, sent, {}, gate=flow_control(run, window, already=start),
                              progress=_of_all(progress, start, len(records)), linger_ms=2)
        await wait_processed(run, start + len(part), began=began,
                             progress=_of_all(progress, 0, len(records)))
        stopped = time.monotonic()
        with (workdir / "trainer.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *command, "--every", str(len(part)), env=run.env,
                stdout=asyncio.subprocess.PIPE, stderr=log)
            out, _ = await process.communicate()
        if process.returncode:
            raise RuntimeError(f"the trainer exited with {process.returncode}; see "
                               f"{workdir / 'trainer.log'}")
        record: dict[str, Any] = json.loads(out)["rounds"][-1]
        if record.get("published"):
            await _wait_serving(run, record["published"])
        record["wall_seconds"] = round(time.monotonic() - stopped, 1)
        record["after_events"] = start + len(part)
        rounds.append(record)
        say(f"{STREAM_TRAINED}: round {record['round']} after {start + len(part):,} events, "
            f"validation NDCG@10 {record['valid_ndcg@10']:.4f} (served "
            f"{record.get('served_valid_ndcg@10') or '-'}): "
            f"{'published' if record.get('published') else 'kept'}, "
            f"{record['wall_seconds']:.0f} s")
    return rounds


async def _wait_serving(run: WorkerRun, version: str, within: float = 300.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        model = await asyncio.to_thread(_model_of, run.base_url)
        if (model.get("behaviour_model") or {}).get("version") == version:
            return
        if not run.alive():
            raise RuntimeError(f"the worker exited; see {run.log}")
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the worker did not serve {version} within {within:.0f} s")


def summary(run: ReplayRun) -> dict[str, Any]:
    latency = np.array(run.latency_ms) if run.latency_ms else np.zeros(1)
    return {
        "variant": run.name, "workers": run.workers, "events": run.events,
        "seconds": round(run.seconds, 1),
        "events_per_second": round(run.events_per_second),
        "recommendations": run.recommendations,
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p99_ms": float(np.percentile(latency, 99)),
    }
