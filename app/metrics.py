"""Prometheus metrics of a worker, in one place, on an injectable registry.

Names follow the client_python conventions: a `streamrec_` namespace, base units, counters
ending in `_total`. Label values are bounded (topic names from settings, reasons and event
types from fixed enums) and created up front, so every series exists from the first scrape.
No label ever carries a user id, an item id or payload text.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.parser import text_string_to_metric_families

from app import __version__
from app.contract.records import EVENT_TYPES, FeedbackType
from app.contract.validate import Reason
from app.core.attribution import UNATTRIBUTED

INPUT_TOPICS = ("events", "items", "feedback", "users")
OUTCOMES = ("accepted", "duplicate", "rejected")
TABLES = ("user-state", "item-state", "feedback-state", "profile-state",   # metric labels
          "item-stats")
_BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    records: Counter
    events: Counter
    deadletters: Counter
    batch_seconds: Histogram
    batch_records: Histogram
    processing_errors: Counter
    retries: Counter
    misrouted: Counter
    commits_held: Counter
    forgotten: Counter
    recommendations: Counter
    written_bytes: Counter
    changelog_replaced: Counter
    latency: Histogram
    item_stats_freshness: Histogram
    candidates: Counter
    catalogue_items: Gauge
    consumer_lag: Gauge
    table_keys: Gauge
    model_info: Gauge
    encoder_seconds: Histogram
    behaviour_vectors: Counter
    behaviour_model_info: Gauge
    behaviour_scale: Gauge
    behaviour_scale_samples: Counter
    pull_seconds: Histogram
    pull_cache: Counter
    loop_lag: Histogram
    loop_stall: Gauge
    broker_reachable: Gauge
    partition_stalls: Counter
    gc_pause: Histogram
    feedback: Counter
    shown: Counter
    conversions: Counter
    unattributed: Counter
    examples: Counter
    behaviour: Counter
    projection_pairs: Counter
    projection_loss: Gauge
    model_updates: Counter
    model_delay: Histogram
    rollbacks: Counter
    model_weight: Gauge
    info: Info

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None,
               variants: tuple[str, ...] = ("frozen", "learning")) -> Metrics:
        """``variants``: the A/B experiment's, whose feedback series exist from the start."""
        registry = registry if registry is not None else CollectorRegistry()
        metrics = cls(
            registry=registry,
            records=Counter(
                "streamrec_input_records_total",
                "Input records by logical topic and outcome (accepted, duplicate, rejected; "
                "forgotten: a forgotten user's, from before the request).",
                ["topic", "outcome"],
                registry=registry,
            ),
            events=Counter(
                "streamrec_events_total",
                "Accepted user events by event type.",
                ["type"],
                registry=registry,
            ),
            deadletters=Counter(
                "streamrec_deadletters_total",
                "Input records routed to the dead-letter topic, by logical topic and reason.",
                ["topic", "reason"],
                registry=registry,
            ),
            batch_seconds=Histogram(
                "streamrec_batch_seconds",
                "Time to process one batch taken from an input topic.",
                ["topic"],
                buckets=_BATCH_BUCKETS,
                registry=registry,
            ),
            batch_records=Histogram(
                "streamrec_batch_records",
                "Records per batch taken from an input topic.",
                ["topic"],
                buckets=_SIZE_BUCKETS,
                registry=registry,
            ),
            processing_errors=Counter(
                "streamrec_processing_errors_total",
                "Failures by stage: a topic's key group (its records are dead-lettered), its "
                "batch preparation or follow-up (-prepare, -after), a whole batch retried "
                "(-batch), a recommendation, learning from a user's next items (behaviour), "
                "or a record of a followed topic skipped (catalogue, models).",
                ["topic"],
                registry=registry,
            ),
            forgotten=Counter(
                "streamrec_users_forgotten_total",
                "Requests to forget a user applied (each tombstone on the users topic, two "
                "for one user counted twice): their state deleted from every table, "
                "tombstones written to its changelogs.",
                registry=registry,
            ),
            retries=Counter(
                "streamrec_retries_total",
                "Transient failures retried with back-off instead of dead-lettering valid "
                "records (a table not writable yet, the broker unreachable), by topic.",
                ["topic"],
                registry=registry,
            ),
            commits_held=Counter(
                "streamrec_commits_held_total",
                "Offset commits held back, by topic, because the record at the committed "
                "offset was not processed yet while later ones were (Faust would have "
                "committed past it: a record lost if the worker stopped then).",
                ["topic"],
                registry=registry,
            ),
            misrouted=Counter(
                "streamrec_misrouted_total",
                "Input records found on a partition other than their key's (a producer "
                "without Kafka's default murmur2 partitioner), by topic: each was sent to "
                "its key's partition and processed there.",
                ["topic"],
                registry=registry,
            ),
            recommendations=Counter(
                "streamrec_recommendations_total",
                "Recommendation records published.",
                registry=registry,
            ),
            written_bytes=Counter(
                "streamrec_written_bytes_total",
                "Bytes of keys and values this worker sent to Kafka, by where: each table's "
                "changelog and the recommendations and catalogue topics (before compression, "
                "headers left out). Per input event, the write amplification of the state.",
                ["to"],
                registry=registry,
            ),
            changelog_replaced=Counter(
                "streamrec_changelog_replaced_total",
                "State writes never sent to a table's changelog: held until the commit "
                "(STREAMREC_CHANGELOG_BUFFER_MB), the key was written again meanwhile.",
                ["to"],
                registry=registry,
            ),
            latency=Histogram(
                "streamrec_event_to_recommendation_seconds",
                "From an event's Kafka timestamp to the publication of the recommendation it "
                "caused.",
                buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
                registry=registry,
            ),
            item_stats_freshness=Histogram(
                "streamrec_item_stats_freshness_seconds",
                "With item_stats=global: from an event's Kafka timestamp until this worker's "
                "co-visitation graph and popularity hold it (the oldest event of each "
                "evidence record merged). Every worker's graph reflects an event once its "
                "slowest follower does: read the highest p99 over the workers.",
                buckets=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0),
                registry=registry,
            ),
            candidates=Counter(
                "streamrec_candidates_total",
                "Candidates proposed, by source (encoder, covisit, popular, sequence, trending).",
                ["source"],
                registry=registry,
            ),
            catalogue_items=Gauge(
                "streamrec_catalogue_items",
                "Items in this worker's in-memory catalogue index.",
                registry=registry,
            ),
            consumer_lag=Gauge(
                "streamrec_consumer_lag_records",
                "Records not yet committed (the broker's end offset less the group's "
                "committed offset), per input topic and partition assigned to this worker.",
                ["topic", "partition"],
                registry=registry,
            ),
            table_keys=Gauge(
                "streamrec_table_keys",
                "Keys in each state table for the partitions this worker owns (RocksDB's "
                "estimate).",
                ["table"],
                registry=registry,
            ),
            model_info=Gauge(
                "streamrec_model_info",
                "1 for the ranker parameters' version each A/B variant is served with on this "
                "worker, and the encoder.",
                ["variant", "version", "encoder"],
                registry=registry,
            ),
            encoder_seconds=Histogram(
                "streamrec_encoder_batch_seconds",
                "Time to embed one batch of texts, by purpose (items, queries; behaviour: "
                "the behaviour model's user vectors).",
                ["purpose"],
                buckets=_BATCH_BUCKETS,
                registry=registry,
            ),
            behaviour_model_info=Gauge(
                "streamrec_behaviour_model_info",
                "1 for the behaviour model this worker serves, by version (none: no series). "
                "It changes without a restart when the models topic names another "
                "(`streamrec model publish`, `streamrec model rollback --behaviour`).",
                ["version"],
                registry=registry,
            ),
            behaviour_scale=Gauge(
                "streamrec_behaviour_scale",
                "What the served behaviour model's feature is multiplied by (its weight in "
                "the ranker over the `sequence` weight), chosen online from users' next "
                "items (app.core.weighing); 0 without a model.",
                registry=registry,
            ),
            behaviour_scale_samples=Counter(
                "streamrec_behaviour_scale_samples_total",
                "Lists ranked at every scale of the grid whose user's next item scored "
                "them: the evidence the served scale is chosen on.",
                registry=registry,
            ),
            behaviour_vectors=Counter(
                "streamrec_behaviour_vectors",
                "User vectors the behaviour model computed (one per user in a batch whose "
                "lists are recomputed, one per pull scored afresh).",
                registry=registry,
            ),
            pull_seconds=Histogram(
                "streamrec_pull_seconds",
                "Time to answer one pull-API recommendation request inside the worker "
                "(state read, scoring, encoding; HTTP handling excluded).",
                buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
                registry=registry,
            ),
            pull_cache=Counter(
                "streamrec_pull_cache_total",
                "Pull requests answered from the user's latest computed list (hit; stale: "
                "older than STREAMREC_PULL_CACHE_SECONDS, answered and scored again right "
                "after) or scored afresh (miss).",
                ["outcome"],
                registry=registry,
            ),
            loop_lag=Histogram(
                "streamrec_event_loop_lag_seconds",
                "How late a 50 ms sleep on the worker's event loop wakes up: time the loop "
                "was blocked, during which no request, batch or heartbeat is served.",
                buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
                registry=registry,
            ),
            broker_reachable=Gauge(
                "streamrec_broker_reachable",
                "1 while the Kafka cluster answers the worker's metadata probe (every 5 s), "
                "0 after two probes in a row went unanswered: the worker is then not ready.",
                registry=registry,
            ),
            loop_stall=Gauge(
                "streamrec_event_loop_stall_max_seconds",
                "The longest the worker's event loop was blocked in the last one to two "
                "minutes (the largest lateness of its 50 ms probe): how long a pull or a "
                "heartbeat can have waited.",
                registry=registry,
            ),
            partition_stalls=Counter(
                "streamrec_partition_stalls_total",
                "Input partitions found not read for 15 s (outside rebalances), by topic "
                "and what the broker and the worker made of it: 'idle' (no record waits), "
                "or, with records waiting, 'unstuck' (put back in the fetch set or resumed) "
                "or 'reported'. Stalls are logged with the consumer's view.",
                ["topic", "action"],
                registry=registry,
            ),
            gc_pause=Histogram(
                "streamrec_gc_pause_seconds",
                "Python garbage-collector runs by generation: each blocks the event loop.",
                ["generation"],
                buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
                registry=registry,
            ),
            feedback=Counter(
                "streamrec_feedback_total",
                "Accepted feedback by A/B variant of its user and type (impression, click, "
                "favourite, add_to_cart, purchase): click-through per variant is clicks / "
                "streamrec_shown_items_total.",
                ["variant", "type"],
                registry=registry,
            ),
            shown=Counter(
                "streamrec_shown_items_total",
                "Items shown in published lists (the top `shown_items` of each), by A/B "
                "variant: the impressions of click-through.",
                ["variant"],
                registry=registry,
            ),
            conversions=Counter(
                "streamrec_conversions_total",
                "Purchases of a recommended item within the conversion window, by variant.",
                ["variant"],
                registry=registry,
            ),
            unattributed=Counter(
                "streamrec_unattributed_feedback_total",
                "Feedback that could not be joined with a shown list, by reason "
                "(unknown_rec, expired, item_not_shown): counted, never learnt from.",
                ["reason"],
                registry=registry,
            ),
            examples=Counter(
                "streamrec_learning_examples_total",
                "Examples the trainer learnt from, by reward (positive, negative).",
                ["reward"],
                registry=registry,
            ),
            behaviour=Counter(
                "streamrec_behaviour_examples_total",
                "Users' next items sampled to teach the ranker, by outcome: learnt (the item "
                "was among the candidates the user had just before: it becomes preferences "
                "over other candidates) or not_a_candidate (nothing to learn).",
                ["outcome"],
                registry=registry,
            ),
            projection_pairs=Counter(
                "streamrec_projection_pairs_total",
                "Pairs (a user's interest just before an event, its item) the trainer "
                "learnt the projection W1 from.",
                registry=registry,
            ),
            projection_loss=Gauge(
                "streamrec_projection_loss",
                "Softmax loss of the trainer's last projection step (over the targets and a "
                "sample of the catalogue), before the step.",
                registry=registry,
            ),
            model_updates=Counter(
                "streamrec_model_updates_total",
                "Ranker parameter versions this worker switched to (learnt or rolled back).",
                registry=registry,
            ),
            model_delay=Histogram(
                "streamrec_model_update_delay_seconds",
                "From the newest feedback behind a learnt version to this worker serving it.",
                buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0),
                registry=registry,
            ),
            rollbacks=Counter(
                "streamrec_model_rollbacks_total",
                "Rollbacks of the learning variant's ranker, by origin (auto: a generation "
                "clicked significantly less than its predecessor; command: an operator). "
                "Counted by the trainer.",
                ["origin"],
                registry=registry,
            ),
            model_weight=Gauge(
                "streamrec_model_weight",
                "The learning variant's current ranker weight per feature on this worker.",
                ["feature"],
                registry=registry,
            ),
            info=Info("streamrec_worker", "Worker build information.", registry=registry),
        )
        metrics.info.info({"version": __version__})
        for topic in INPUT_TOPICS:
            for outcome in OUTCOMES:
                metrics.records.labels(topic, outcome)
            for reason in Reason:
                metrics.deadletters.labels(topic, reason.value)
            for stage in (topic, f"{topic}-prepare", f"{topic}-after", f"{topic}-batch"):
                metrics.processing_errors.labels(stage)
            metrics.retries.labels(topic)
            metrics.misrouted.labels(topic)
            metrics.batch_seconds.labels(topic)
            metrics.batch_records.labels(topic)
        for event_type in EVENT_TYPES:
            metrics.events.labels(event_type)
        metrics.processing_errors.labels("recommendations")
        for written in (*TABLES, "recommendations", "catalogue", "evidence"):
            metrics.written_bytes.labels(written)
        metrics.processing_errors.labels("behaviour")
        for followed in ("catalogue", "models", "item-stats", "evidence"):   # not applied
            metrics.processing_errors.labels(followed)
        for source in ("encoder", "covisit", "popular", "sequence", "trending"):
            metrics.candidates.labels(source)
        for purpose in ("items", "queries", "behaviour"):
            metrics.encoder_seconds.labels(purpose)
        for outcome in ("hit", "stale", "miss"):
            metrics.pull_cache.labels(outcome)
        for generation in ("0", "1", "2"):
            metrics.gc_pause.labels(generation)
        for variant in variants:
            for kind in FeedbackType:
                metrics.feedback.labels(variant, kind.value)
            metrics.shown.labels(variant)
            metrics.conversions.labels(variant)
        for cause in UNATTRIBUTED:
            metrics.unattributed.labels(cause)
        for reward in ("positive", "negative"):
            metrics.examples.labels(reward)
        for outcome in ("learnt", "not_a_candidate"):
            metrics.behaviour.labels(outcome)
        for origin in ("auto", "command"):
            metrics.rollbacks.labels(origin)
        return metrics


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout: float = 5.0) -> Samples:
    """The samples of a /metrics page, by (name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a worker
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))
