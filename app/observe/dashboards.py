"""Grafana dashboards as code (grafana-foundation-sdk), generated into the JSON that
docker-compose's Grafana provisions: `streamrec dashboards` writes it, `--check` fails when
the committed file is stale. A test also checks that every query names a metric the worker
really exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import TimeZoneBrowser
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

TARGET = Path("deploy/grafana/dashboards/streamrec.json")
# every panel and the worker variable ask the data source chosen in the dashboard's
# "Data source" variable (Grafana's default Prometheus until one is picked)
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
WORKERS = '{job="streamrec", instance=~"$instance"}'
HIT, CLICK = 'outcome=~"hit|stale"', 'type="click"'
ACCEPTED = 'topic="events", outcome="accepted"'


def _m(metric: str, labels: str = "") -> str:
    """A metric selector limited to the workers chosen in the "Worker" variable (all by
    default), with ``labels`` (e.g. 'outcome="hit"') added."""
    inner = 'instance=~"$instance"' + (f", {labels}" if labels else "")
    return f"{metric}{{{inner}}}"


def _rate(metric: str, labels: str = "") -> str:
    return f"rate({_m(metric, labels)}[$__rate_interval])"


def _query(expr: str, legend: str, ref: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def _series(title: str, unit: str, *queries: Dataquery, width: int = 12) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).min(0).span(width).height(8)
    for query in queries:
        panel = panel.with_target(query)
    return panel.datasource(DATASOURCE)


def _p99(metric: str, by: str = "", legend: str = "p99", ref: str = "A") -> Dataquery:
    """The 0.99 quantile of a histogram, per ``by`` labels."""
    return _quantile("0.99", metric, by, legend, ref)


def _quantile(quantile: str, metric: str, by: str = "", legend: str = "",
              ref: str = "A") -> Dataquery:
    labels = ", ".join(["le", *([by] if by else [])])
    return _query(f"histogram_quantile({quantile}, sum by ({labels}) "
                  f"({_rate(metric + '_bucket')}))", legend or _percentile(quantile), ref)


def _latency(quantile: str) -> Dataquery:
    return _quantile(quantile, "streamrec_event_to_recommendation_seconds",
                     ref=_percentile(quantile).upper())


def _percentile(quantile: str) -> str:
    """A quantile's legend: "0.5" -> "p50", "0.99" -> "p99", "0.999" -> "p99.9"."""
    return f"p{float(quantile) * 100:.10g}"


def _variables(dashboard: Dashboard) -> Dashboard:
    source = DatasourceVariable("datasource").label("Data source").type("prometheus")
    workers = (QueryVariable("instance").label("Worker").datasource(DATASOURCE)
               .query('label_values(up{job="streamrec"}, instance)')
               .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
               .multi(True).include_all(True).all_value(".*"))
    return dashboard.with_variable(source).with_variable(workers)


def build() -> Dashboard:
    return (
        _variables(Dashboard("StreamRec"))
        .uid("streamrec")
        .tags(["streamrec", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone(TimeZoneBrowser)
        .with_row(Row("Flow"))
        .with_panel(_series(
            "Events by type", "ops",
            _query(f"sum by (type) ({_rate('streamrec_events_total')})", "{{type}}")))
        .with_panel(_series(
            "Input records by topic and outcome", "ops",
            _query(f"sum by (topic, outcome) ({_rate('streamrec_input_records_total')})",
                   "{{topic}} {{outcome}}")))
        .with_panel(_series(
            "Event -> recommendation latency", "s",
            _latency("0.5"), _latency("0.9"), _latency("0.99")))
        .with_panel(_series(
            "Recommendations published", "ops",
            _query(f"sum by (instance) ({_rate('streamrec_recommendations_total')})",
                   "{{instance}}")))
        .with_row(Row("Health"))
        .with_panel(_series(
            "Consumer lag per partition", "short",
            _query(f"sum by (topic, partition) ({_m('streamrec_consumer_lag_records')})",
                   "{{topic}}/{{partition}}")))
        .with_panel(_series(
            "Dead letters by reason", "ops",
            _query(f"sum by (topic, reason) ({_rate('streamrec_deadletters_total')})",
                   "{{topic}} {{reason}}")))
        .with_panel(_series(
            "Processing errors by stage", "ops",
            _query(f"sum by (topic) ({_rate('streamrec_processing_errors_total')})",
                   "{{topic}}")))
        .with_panel(_series(
            "Event loop lag p99, its longest stall, and GC pauses p99", "s",
            _p99("streamrec_event_loop_lag_seconds", "instance", "loop {{instance}}"),
            _query(f"max by (instance) ({_m('streamrec_event_loop_stall_max_seconds')})",
                   "longest stall {{instance}}", ref="C"),
            _p99("streamrec_gc_pause_seconds", "generation", "gc gen {{generation}}", "B")))
        .with_panel(_series(
            "Pull API: time inside the worker p99", "s",
            _p99("streamrec_pull_seconds"), width=6))
        .with_panel(_series(
            "Pull API: answered from the cached list", "percentunit",
            _query(f"sum({_rate('streamrec_pull_cache_total', HIT)}) "
                   f"/ sum({_rate('streamrec_pull_cache_total')})", "cache hit ratio"),
            width=6))
        .with_panel(
            Stat().title("Workers up").unit("short").span(12).height(8).datasource(DATASOURCE)
            .with_target(_query(f"sum(up{WORKERS})", "up")))
        .with_row(Row("Scale"))
        .with_panel(_series(
            "Global item statistics: event -> every graph, p99 (item_stats=global)", "s",
            _p99("streamrec_item_stats_freshness_seconds", "instance", "{{instance}}")))
        .with_panel(_series(
            "Bytes written to Kafka per input event", "decbytes",
            _query(f"sum by (to) ({_rate('streamrec_written_bytes_total')}) / scalar(sum("
                   f"{_rate('streamrec_input_records_total', ACCEPTED)}))", "{{to}}")))
        .with_row(Row("Model"))
        .with_panel(_series(
            "Encoder batch latency p99", "s",
            _p99("streamrec_encoder_batch_seconds", "purpose", "{{purpose}}")))
        .with_panel(_series(
            "Candidates per source", "ops",
            _query(f"sum by (source) ({_rate('streamrec_candidates_total')})",
                   "{{source}}")))
        .with_panel(_series(
            "Catalogue items per worker", "short",
            _query(_m("streamrec_catalogue_items"), "{{instance}}")))
        .with_panel(_series(
            "State table keys", "short",
            _query(f"sum by (table) ({_m('streamrec_table_keys')})", "{{table}}")))
        .with_panel(_series(
            "Batch processing time p99", "s",
            _p99("streamrec_batch_seconds", "topic", "{{topic}}")))
        .with_panel(_series(
            "Click-through by experiment variant", "percentunit",
            _query(f"sum by (variant) ({_rate('streamrec_feedback_total', CLICK)})"
                   f" / sum by (variant) ({_rate('streamrec_shown_items_total')})",
                   "{{variant}}")))
        .with_panel(_series(
            "Model version per worker", "short",
            _query(f"max by (instance, variant, version, encoder) "
                   f"({_m('streamrec_model_info')})",
                   "{{instance}} {{variant}} {{version}} {{encoder}}")))
        .with_panel(_series(
            "Learnt ranker weights", "none",
            _query(f"max by (feature) ({_m('streamrec_model_weight')})", "{{feature}}")))
        .with_panel(_series(
            "Ranker versions applied and rolled back", "ops",
            _query(f"sum({_rate('streamrec_model_updates_total')})", "versions applied"),
            _query(f"sum by (origin) ({_rate('streamrec_model_rollbacks_total')})",
                   "rollbacks ({{origin}})", ref="B")))
        .with_panel(_series(
            "Reward to served version p99", "s",
            _p99("streamrec_model_update_delay_seconds")))
        .with_panel(_series(
            "Behaviour model's weight (scale; 0: none) and lists scored by next items",
            "short",
            _query(f"max by (instance) ({_m('streamrec_behaviour_scale')})",
                   "scale {{instance}}"),
            _query(f"sum({_rate('streamrec_behaviour_scale_samples_total')})",
                   "lists scored per second", ref="B")))
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
