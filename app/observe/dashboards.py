"""Grafana dashboards as code (grafana-foundation-sdk), generated into the JSON that
docker-compose's Grafana provisions: `streamrec dashboards` writes it, `--check` fails when
the committed file is stale. A test also checks that every query names a metric the worker
really exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import TimeZoneBrowser
from grafana_foundation_sdk.models.dashboard import DataSourceRef

TARGET = Path("deploy/grafana/dashboards/streamrec.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")


def _query(expr: str, legend: str, ref: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def _series(title: str, unit: str, *queries: Dataquery, width: int = 12) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).min(0).span(width).height(8)
    for query in queries:
        panel = panel.with_target(query)
    return panel.datasource(DATASOURCE)


def _latency(quantile: str) -> Dataquery:
    return _query(
        f"histogram_quantile({quantile}, sum by (le) "
        "(rate(streamrec_event_to_recommendation_seconds_bucket[$__rate_interval])))",
        _percentile(quantile), ref=_percentile(quantile).upper())


def _percentile(quantile: str) -> str:
    """A quantile's legend: "0.5" -> "p50", "0.99" -> "p99", "0.999" -> "p99.9"."""
    return f"p{float(quantile) * 100:.10g}"


def build() -> Dashboard:
    return (
        Dashboard("StreamRec")
        .uid("streamrec")
        .tags(["streamrec", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone(TimeZoneBrowser)
        .with_row(Row("Flow"))
        .with_panel(_series(
            "Events by type", "ops",
            _query("sum by (type) (rate(streamrec_events_total[$__rate_interval]))",
                   "{{type}}")))
        .with_panel(_series(
            "Input records by topic and outcome", "ops",
            _query("sum by (topic, outcome) "
                   "(rate(streamrec_input_records_total[$__rate_interval]))",
                   "{{topic}} {{outcome}}")))
        .with_panel(_series(
            "Event -> recommendation latency", "s",
            _latency("0.5"), _latency("0.9"), _latency("0.99")))
        .with_panel(_series(
            "Recommendations published", "ops",
            _query("sum by (instance) (rate(streamrec_recommendations_total"
                   "[$__rate_interval]))", "{{instance}}")))
        .with_row(Row("Health"))
        .with_panel(_series(
            "Consumer lag per partition", "short",
            _query("sum by (topic, partition) (streamrec_consumer_lag_records)",
                   "{{topic}}/{{partition}}")))
        .with_panel(_series(
            "Dead letters by reason", "ops",
            _query("sum by (topic, reason) (rate(streamrec_deadletters_total"
                   "[$__rate_interval])) > 0", "{{topic}} {{reason}}")))
        .with_panel(_series(
            "Processing errors by stage", "ops",
            _query("sum by (topic) (rate(streamrec_processing_errors_total"
                   "[$__rate_interval]))", "{{topic}}")))
        .with_panel(_series(
            "Event loop lag p99, its longest stall, and GC pauses p99", "s",
            _query("histogram_quantile(0.99, sum by (le, instance) "
                   "(rate(streamrec_event_loop_lag_seconds_bucket[$__rate_interval])))",
                   "loop {{instance}}"),
            _query("max by (instance) (streamrec_event_loop_stall_max_seconds)",
                   "longest stall {{instance}}", ref="C"),
            _query("histogram_quantile(0.99, sum by (le, generation) "
                   "(rate(streamrec_gc_pause_seconds_bucket[$__rate_interval])))",
                   "gc gen {{generation}}", ref="B")))
        .with_panel(_series(
            "Pull API: time inside the worker p99, and cache hits", "s",
            _query("histogram_quantile(0.99, sum by (le) "
                   "(rate(streamrec_pull_seconds_bucket[$__rate_interval])))", "p99"),
            _query("sum(rate(streamrec_pull_cache_total{outcome=\"hit\"}[$__rate_interval])) "
                   "/ sum(rate(streamrec_pull_cache_total[$__rate_interval]))",
                   "cache hit ratio", ref="B")))
        .with_panel(
            Stat().title("Workers up").span(12).height(8).datasource(DATASOURCE)
            .with_target(_query('sum(up{job="streamrec"})', "up")))
        .with_row(Row("Model"))
        .with_panel(_series(
            "Encoder batch latency p99", "s",
            _query("histogram_quantile(0.99, sum by (le, purpose) "
                   "(rate(streamrec_encoder_batch_seconds_bucket[$__rate_interval])))",
                   "{{purpose}}")))
        .with_panel(_series(
            "Candidates per source", "ops",
            _query("sum by (source) (rate(streamrec_candidates_total[$__rate_interval]))",
                   "{{source}}")))
        .with_panel(_series(
            "Catalogue items per worker", "short",
            _query("streamrec_catalogue_items", "{{instance}}")))
        .with_panel(_series(
            "State table keys", "short",
            _query("sum by (table) (streamrec_table_keys)", "{{table}}")))
        .with_panel(_series(
            "Batch processing time p99", "s",
            _query("histogram_quantile(0.99, sum by (le, topic) "
                   "(rate(streamrec_batch_seconds_bucket[$__rate_interval])))",
                   "{{topic}}")))
        .with_panel(_series(
            "Click-through by experiment variant", "percentunit",
            _query('sum by (variant) (rate(streamrec_feedback_total{type="click"}'
                   "[$__rate_interval])) / sum by (variant) "
                   "(rate(streamrec_shown_items_total[$__rate_interval]))", "{{variant}}")))
        .with_panel(_series(
            "Model version per worker", "short",
            _query("max by (instance, variant, version, encoder) (streamrec_model_info)",
                   "{{instance}} {{variant}} {{version}} {{encoder}}")))
        .with_panel(_series(
            "Learnt ranker weights", "short",
            _query("max by (feature) (streamrec_model_weight)", "{{feature}}")))
        .with_panel(_series(
            "Model updates, rollbacks and delay p99", "short",
            _query("sum(rate(streamrec_model_updates_total[$__rate_interval]))",
                   "versions applied/s", ref="A"),
            _query("sum by (origin) (increase(streamrec_model_rollbacks_total"
                   "[$__rate_interval]))", "rollbacks ({{origin}})", ref="B"),
            _query("histogram_quantile(0.99, sum by (le) "
                   "(rate(streamrec_model_update_delay_seconds_bucket[$__rate_interval])))",
                   "reward to served p99 (s)", ref="C")))
    )


def render() -> str:
    encoded = JSONEncoder(sort_keys=True, indent=2).encode(build().build())
    return encoded + "\n"


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a rendered dashboard."""
    return [target["expr"] for panel in dashboard.get("panels", [])
            for target in panel.get("targets", []) if "expr" in target]


def write(check: bool) -> bool:
    """Write the dashboard JSON (or, with ``check``, tell whether it is up to date)."""
    text = render()
    if check:
        return TARGET.exists() and TARGET.read_text() == text
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text)
    json.loads(text)
    return True
