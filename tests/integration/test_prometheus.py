"""A real Prometheus (Debian package) scrapes a worker that processes events, with the
scrape job and alert rules of deploy/prometheus; the key series are read back through
Prometheus' HTTP API. Also: promtool accepts the configuration, the rules and their tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import msgspec

from app.broker.apache import KafkaBroker
from app.contract.records import Feedback, FeedbackType, ItemUpsert, Recommendation, View
from app.observe.dashboards import queries, render
from tests.support.kafka_io import produce, read_topic
from tests.support.prometheus import ROOT, Prometheus, binary
from tests.support.worker import WorkerProcess

TS = 1_700_000_000_000


def test_promtool_accepts_config_rules_and_rule_tests() -> None:
    promtool = str(binary("promtool"))
    folder = ROOT / "deploy/prometheus"
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *args], cwd=folder, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_the_key_series_from_a_working_worker(
        kafka: KafkaBroker, worker: WorkerProcess, tmp_path: Path) -> None:
    env = worker.env
    items = [(f"i{n}".encode(), msgspec.json.encode(ItemUpsert(
        v=1, event_id=f"c{n}", item_id=f"i{n}", ts=TS, title=f"Film number {n}",
        category="drama"))) for n in range(20)]
    events = [(f"u{n % 5}".encode(), msgspec.json.encode(View(
        v=1, event_id=f"e{n}", user_id=f"u{n % 5}", ts=TS + n, item_id=f"i{n % 20}")))
        for n in range(60)]
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], items))
    worker.wait_metric("streamrec_catalogue_items", 20)
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], events))
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"],
                        [(b"u0", b"{not json")]))
    worker.wait_metric("streamrec_input_records_total", 60, topic="events", outcome="accepted")

    target = worker.base_url.removeprefix("http://")
    prometheus = Prometheus(tmp_path / "prometheus", [target]).start()
    try:
        expected = {
            'up{job="streamrec"}': 1.0,
            'sum(streamrec_input_records_total{topic="events",outcome="accepted"})': 60.0,
            'sum(streamrec_events_total{type="view"})': 60.0,
            "streamrec_catalogue_items": 20.0,
            'sum(streamrec_deadletters_total{topic="events"})': 1.0,
        }
        deadline = time.monotonic() + 60
        got: dict[str, float | None] = {}
        while time.monotonic() < deadline:
            got = {expr: prometheus.value(expr) for expr in expected}
            if got == expected and (prometheus.value(
                    "streamrec_event_to_recommendation_seconds_count") or 0) >= 1:
                break
            time.sleep(1)
        assert got == expected
        assert (prometheus.value("streamrec_recommendations_total") or 0) >= 1
        assert prometheus.value('count(streamrec_consumer_lag_records)') is not None
        assert (prometheus.value(
            'sum(streamrec_event_to_recommendation_seconds_bucket{le="+Inf"})') or 0) >= 1
        assert prometheus.value("streamrec_model_info") == 1.0
        _every_panel_has_data(prometheus, worker, target)
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) >= 5
        assert all(rule["health"] == "ok" for rule in rules), rules
    finally:
        prometheus.stop()


# series that exist only after what this workload does not do: a learnt ranker version
# served (its delay from reward to served) and a rollback
NO_DATA_WITHOUT_A_LEARNT_VERSION = ("streamrec_model_update_delay_seconds",
                                    "streamrec_model_rollbacks_total")


def _every_panel_has_data(prometheus: Prometheus, worker: WorkerProcess, target: str) -> None:
    """Each query of the generated dashboard, its variables given as Grafana would (the
    worker chosen, a rate interval), returns a series from the scraped worker: the screen
    an operator opens is not blank. Pulls and a click are made first so the pull-API and
    click-through panels have something to show."""
    for user in ("u0", "u0", "u1"):
        assert worker._get(f"/users/{user}/recommendations?k=3")[0] == 200
    rec = asyncio.run(read_topic(worker.env["STREAMREC_BROKER_URL"],
                                 worker.env["STREAMREC_TOPIC_RECOMMENDATIONS"], 1))[0]
    listed = msgspec.json.decode(rec.value, type=Recommendation)
    click = Feedback(v=1, type=FeedbackType.CLICK, event_id="click-1", user_id=listed.user_id,
                     rec_id=listed.rec_id, item_id=listed.items[0].item_id, ts=TS + 100)
    asyncio.run(produce(worker.env["STREAMREC_BROKER_URL"], worker.env["STREAMREC_TOPIC_FEEDBACK"],
                        [(listed.user_id.encode(), msgspec.json.encode(click))]))
    worker.wait_metric("streamrec_feedback_total", 1, type="click")
    panels = [query.replace("$__rate_interval", "1m").replace("$instance", target)
              for query in queries(json.loads(render()))]
    expected = [q for q in panels if not any(m in q for m in NO_DATA_WITHOUT_A_LEARNT_VERSION)]
    assert len(expected) >= 20
    deadline = time.monotonic() + 30
    while True:
        blank = [q for q in expected if not prometheus.api("query", query=q)["result"]]
        if not blank or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert blank == []
