"""Dashboards as code and alert rules reference only what the worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from app.metrics import Metrics
from app.observe.dashboards import TARGET, queries, render

ROOT = Path(__file__).resolve().parents[2]
_METRIC = re.compile(r"\bstreamrec_[a-z_]+\b")


def exported_series() -> set[str]:
    """Every series name a worker's registry can expose (counters' _total, histograms'
    _bucket/_sum/_count, ...)."""
    metrics = Metrics.create()
    return {sample.name for family in metrics.registry.collect() for sample in family.samples} \
        | {family.name for family in metrics.registry.collect()}


def test_committed_dashboard_is_generated_from_the_code() -> None:
    assert (ROOT / TARGET).read_text() == render(), "run `streamrec dashboards`"


def test_every_dashboard_query_names_an_exported_metric() -> None:
    exported = exported_series()
    exprs = queries(json.loads(render()))
    assert len(exprs) >= 12
    named = {name for expr in exprs for name in _METRIC.findall(expr)}
    assert named, exprs
    assert named <= exported, named - exported
    titles = {p["title"] for p in json.loads(render())["panels"]}
    for needed in ("Events by type", "Event -> recommendation latency",
                   "Consumer lag per partition", "Dead letters by reason",
                   "Encoder batch latency p99", "Candidates per source",
                   "Model version per worker"):
        assert needed in titles


def test_latency_legends_name_their_percentiles() -> None:
    panel = next(p for p in json.loads(render())["panels"]
                 if p["title"] == "Event -> recommendation latency")
    assert [t["legendFormat"] for t in panel["targets"]] == ["p50", "p90", "p99"]


def test_alert_rules_name_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    named = {name for expr in exprs for name in _METRIC.findall(expr)}
    assert named <= exported_series(), named - exported_series()


def test_metrics_asked_by_name_render_those_samples_alone() -> None:
    """/metrics?name[]=N (what the benchmark's flow control polls ten times a second): the
    worker renders N's samples only, with the same values."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from app.metrics import total

    metrics = Metrics.create()
    metrics.records.labels("events", "accepted").inc(7)
    whole = generate_latest(metrics.registry).decode()
    only = generate_latest(metrics.registry.restricted_registry(
        ["streamrec_input_records_total"])).decode()
    names = {s.name for f in text_string_to_metric_families(only) for s in f.samples}
    assert names == {"streamrec_input_records_total"}
    assert len(only) * 20 < len(whole)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(only) for s in f.samples}
    assert total(samples, "streamrec_input_records_total", topic="events") == 7
