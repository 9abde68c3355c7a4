"""Global item statistics on Apache Kafka (STREAMREC_ITEM_STATS=global): three workers,
each with a third of the users, all follow the co-visitation graph one worker would build
from the whole stream; a worker killed and replaced on an empty disk, and a fourth joining,
follow it too."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from pathlib import Path

import msgspec
import pytest

from app.broker.apache import KafkaBroker, free_port
from app.contract.records import View
from app.core.covisit import CoVisitation
from app.core.profile import SEQUENCE_WEIGHTS
from app.soak.fuzz import read_all
from tests.integration.test_recommendations import CATALOGUE, TS, _items
from tests.support.kafka_io import latest_by_key, produce
from tests.support.worker import WorkerProcess, isolated_env, wait_assigned, wait_total

ITEMS = sorted(CATALOGUE)


def _wave(users: range, seed: int, start: int) -> dict[str, list[str]]:
    """Each user views some items once each, in an order of their own."""
    rng = random.Random(seed)
    return {f"user-{n}": rng.sample(ITEMS, rng.randint(2, len(ITEMS)))
            for n in users} | {"_start": [str(start)]}


def _events(wave: dict[str, list[str]]) -> list[tuple[bytes, bytes]]:
    start = int(wave["_start"][0])
    return [(user.encode(), msgspec.json.encode(View(
        v=1, event_id=f"{user}-{start + i}", user_id=user, ts=TS + start + i, item_id=item)))
        for user, items in wave.items() if user != "_start"
        for i, item in enumerate(items)]


def _expected(waves: list[dict[str, list[str]]]) -> CoVisitation:
    """The graph one worker builds from the whole stream, user by user."""
    graph = CoVisitation()
    history: dict[str, list[str]] = {}
    for wave in waves:
        for user, items in wave.items():
            if user == "_start":
                continue
            order = history.setdefault(user, [])
            for item in items:   # as app.core.serving.learn_sequence: an item seen again
                graph.observe(order, item, SEQUENCE_WEIGHTS["view"])   # moves to the end
                if item in order:
                    order.remove(item)
                order.append(item)
    return graph


def _differences(worker: WorkerProcess, graph: CoVisitation) -> list[str]:
    """Where a worker's graph (its 5 strongest neighbours per item, as /items shows them)
    differs from ``graph`` (a tie at the fifth may list either item)."""
    wrong = []
    for item in ITEMS:
        status, body = worker._get(f"/items/{item}")
        assert status == 200, (item, status)
        shown = {c["item_id"]: c["strength"] for c in json.loads(body)["covisited"]}
        truth = dict(graph.neighbours(item, len(ITEMS)))
        top = sorted(truth.values(), reverse=True)[:5]
        if (sorted(shown.values(), reverse=True) != [round(s, 4) for s in top]
                or any(round(truth.get(n, -1.0), 4) != s for n, s in shown.items())):
            wrong.append(f"{item}: {shown} vs {sorted(truth.items(), key=lambda kv: -kv[1])}")
    return wrong


def _wait_same(workers: list[WorkerProcess], graph: CoVisitation, within: float = 60.0
               ) -> None:
    deadline = time.monotonic() + within
    wrong: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        wrong = {w.log.name: d for w in workers if (d := _differences(w, graph))}
        if not wrong:
            return
        time.sleep(0.5)
    raise AssertionError(f"graphs differ from the single-worker one: {wrong}")


@pytest.mark.slow
def test_every_worker_follows_the_single_worker_graph(kafka: KafkaBroker, tmp_path: Path
                                                      ) -> None:
    env = isolated_env(kafka.bootstrap, tmp_path / "w0", partitions=4)
    env["STREAMREC_ITEM_STATS"] = "global"
    env["STREAMREC_ITEM_STATS_FLUSH_SECONDS"] = "0.5"

    def spawn(n: int) -> WorkerProcess:
        return WorkerProcess({**env, "STREAMREC_DATA_DIR": str(tmp_path / f"w{n}"),
                              "STREAMREC_WEB_PORT": str(free_port())},
                             tmp_path / f"w{n}.log").start()

    workers = [spawn(n) for n in range(3)]
    try:
        for worker in workers:
            worker.wait_ready()
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items()))
        for worker in workers:
            worker.wait_metric("streamrec_catalogue_items", len(CATALOGUE))
        wait_assigned(workers, env["STREAMREC_TOPIC_EVENTS"], 4)   # no rebalance under way
        waves = [_wave(range(0, 60), seed=1, start=0)]
        sent = len(_events(waves[0]))
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], _events(waves[0])))
        wait_total(workers, "streamrec_input_records_total", sent, topic="events",
                   outcome="accepted")
        shares = [w.metric("streamrec_input_records_total", topic="events",
                           outcome="accepted") for w in workers]
        assert all(shares), shares   # each worker saw only some of the users ...
        _wait_same(workers, _expected(waves))   # ... and all follow the whole graph
        assert all(w.metric("streamrec_item_stats_freshness_seconds_count") > 0
                   for w in workers)

        # killed (no commit, no flush) and replaced on an empty disk: the replacement
        # follows the whole graph again, and the owners it took over go on from their table
        victim = workers.pop(1)
        time.sleep(4)   # (its last offsets committed: this part is not about duplicates)
        victim.kill()
        shutil.rmtree(victim.env["STREAMREC_DATA_DIR"])
        workers.append(spawn(3))
        workers[-1].wait_ready(within=120)
        waves.append(_wave(range(40, 100), seed=2, start=100))
        more = len(_events(waves[1]))
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], _events(waves[1])))
        _wait_same(workers, _expected(waves), within=120)

        # a fourth worker joins: it follows the same graph at once
        workers.append(spawn(4))
        workers[-1].wait_ready(within=120)
        waves.append(_wave(range(80, 130), seed=3, start=200))
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], _events(waves[2])))
        _wait_same(workers, _expected(waves), within=120)
        assert sent + more > 0
    finally:
        for worker in workers:
            worker.stop()


@pytest.mark.slow
@pytest.mark.parametrize("keep_local_state", [True, False], ids=["same-disk", "new-disk"])
def test_evidence_of_a_killed_transaction_is_counted_once(
        kafka: KafkaBroker, tmp_path: Path, keep_local_state: bool) -> None:
    """Exactly-once: a worker killed (SIGKILL) after it sent a batch's evidence but before
    its transaction committed. The evidence is aborted with the batch's input offsets and
    state, no owner merges it, and the replacement, reading the events again, counts each
    edge once (the graph is the single-worker one, not twice its strengths)."""
    env = isolated_env(kafka.bootstrap, tmp_path / "data", partitions=4)
    env.update({"STREAMREC_ITEM_STATS": "global", "STREAMREC_ITEM_STATS_FLUSH_SECONDS": "0.5",
                "STREAMREC_PROCESSING_GUARANTEE": "exactly_once",
                "STREAMREC_STANDBY_REPLICAS": "0",
                # a commit long after the events: the kill lands inside the transaction
                "STREAMREC_COMMIT_INTERVAL_SECONDS": "600"})
    waves = [_wave(range(0, 40), seed=4, start=0)]
    first = WorkerProcess(env, tmp_path / "worker1.log").start()
    try:
        first.wait_ready()
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items()))
        first.wait_metric("streamrec_catalogue_items", len(CATALOGUE))
        sent = _events(waves[0])
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], sent))
        first.wait_metric("streamrec_input_records_total", len(sent), topic="events",
                          outcome="accepted")
        first.wait_metric("streamrec_recommendations_total", len(waves[0]) - 1)
        time.sleep(1.0)   # every batch's evidence reaches the broker, uncommitted
    finally:
        first.kill()
    stats = f"{env['STREAMREC_APP_ID']}-item-stats-changelog"
    assert asyncio.run(latest_by_key(kafka.bootstrap, stats)) == {}   # nothing merged ...
    evidence = asyncio.run(read_all(kafka.bootstrap, env["STREAMREC_TOPIC_EVIDENCE"]))
    assert evidence == [], f"{len(evidence)} evidence records visible to read_committed"
    if not keep_local_state:
        shutil.rmtree(tmp_path / "data")

    env["STREAMREC_COMMIT_INTERVAL_SECONDS"] = "1"
    second = WorkerProcess(env, tmp_path / "worker2.log").start()
    try:
        second.wait_ready(within=120)
        _wait_same([second], _expected(waves))   # the events read again, counted once
        waves.append(_wave(range(20, 60), seed=5, start=100))
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], _events(waves[1])))
        _wait_same([second], _expected(waves))
    finally:
        second.stop()
