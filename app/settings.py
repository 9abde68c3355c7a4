"""One frozen settings object for every StreamRec process.

Every field is read from an environment variable named ``STREAMREC_<FIELD>`` (upper case),
or from a ``.env`` file in the working directory. ``docs/configuration.md`` is generated
from this class (``streamrec settings --markdown``) and a test keeps the two in step.
"""

from __future__ import annotations

import socket
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.experiments import Experiment

ENV_PREFIX = "STREAMREC_"


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class Settings(BaseSettings):
    """StreamRec configuration. Field docstrings become the settings table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
    )

    # --- Kafka connection -------------------------------------------------------------
    broker_url: str = ""
    """Kafka bootstrap servers, comma-separated `host:port` (a `kafka://` prefix is
    accepted). Empty: the embedded, memory-only Tansu broker (development only), which a
    worker uses only when told to (`EMBEDDED_BROKER`, or `streamrec worker --embedded`);
    otherwise it refuses to start."""

    embedded_broker: bool = False
    """Let a worker with no `BROKER_URL` start (or join) the embedded, memory-only broker.
    Off by default: a production worker whose `BROKER_URL` went missing must not accept
    events into memory and lose them. `streamrec demo` turns it on for its own worker."""

    connect_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """How long a command or a starting worker waits for the Kafka cluster to answer
    before it gives up with one line naming the address."""

    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""

    sasl_mechanism: SaslMechanism = SaslMechanism.SCRAM_SHA_512
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (used with the SASL protocols)."""

    sasl_username: str = ""
    """SASL user name."""

    sasl_password: SecretStr = SecretStr("")
    """SASL password (never logged)."""

    ssl_cafile: Path | None = None
    """CA bundle (PEM) to verify the brokers, for SSL and SASL_SSL."""

    ssl_certfile: Path | None = None
    """Client certificate (PEM) for mutual TLS."""

    ssl_keyfile: Path | None = None
    """Client private key (PEM) for mutual TLS."""

    ssl_key_password: SecretStr = SecretStr("")
    """Password of the client private key, if it has one (never logged)."""

    embedded_port: int = Field(default=29092, ge=1, le=65535)
    """Port of the embedded broker when `BROKER_URL` is empty."""

    # --- Topics -----------------------------------------------------------------------
    app_id: str = "streamrec"
    """Consumer group id and prefix of internal (changelog) topics."""

    topic_events: str = "events"
    """Input: browse, search, add-to-cart and purchase events, keyed by user id."""

    topic_items: str = "items"
    """Input: catalogue upserts and deletes, keyed by item id (compacted)."""

    topic_feedback: str = "feedback"
    """Input: impressions, clicks, favourites and purchases on recommendations, keyed by user id."""

    topic_users: str = "users"
    """Input: optional user profile attributes, keyed by user id (compacted)."""

    topic_recommendations: str = "recommendations"
    """Output: ranked, explained recommendations, keyed by user id."""

    topic_deadletter: str = "deadletter"
    """Output: rejected input records, original bytes plus reason headers."""

    topic_catalogue: str = "catalogue"
    """Internal: cleaned items with their vectors, read in full by every worker (compacted)."""

    topic_examples: str = "examples"
    """Internal: learning examples and shown/click counts for the trainer (one partition)."""

    topic_models: str = "models"
    """Internal: ranker parameter versions (head and checkpoints), read in full by every
    worker (compacted, one partition)."""

    topic_evidence: str = "item-evidence"
    """Internal (``item_stats=global``): what each batch of events teaches about items,
    one record per item partition and batch, read by the owner of that partition."""

    partitions: int = Field(default=8, ge=1, le=4096)
    """Partitions of every user-keyed topic (must be equal: topics are co-partitioned)."""

    replication_factor: int = Field(default=1, ge=1, le=16)
    """Replication factor used when StreamRec creates its topics."""

    # --- Validation -------------------------------------------------------------------
    max_payload_bytes: int = Field(default=65_536, ge=256)
    """Input records larger than this go to the dead-letter topic (`oversize`)."""

    deadletter_max_bytes: int = Field(default=262_144, ge=1024, le=900_000)
    """A dead letter's key and value together are cut to this many bytes (the original
    sizes in headers), so that a record the producer could not send whole (over its
    1,000,000-byte request limit) is still forwarded."""

    deadletter_retention_hours: float = Field(default=336.0, gt=0, le=8760)
    """How long the dead-letter topic keeps records (its `retention.ms`, set when
    `streamrec topics` or a worker creates it; an existing topic keeps its own). Dead
    letters of user-keyed topics hold user ids and, unless redacted, payloads."""

    forget_guard_seconds: float = Field(default=600.0, ge=0, le=86_400)
    """How long a forgotten user's marker stays (their key and the request's time, nothing
    else): until then their events and feedback from before the request are dropped, read
    again after a crash or arriving late behind a backlog, instead of building their state
    again; then the marker is deleted (docs/operations.md, "Forgetting a user"). Longer than
    the worst consumer lag you expect; 0 deletes at once (no guard)."""

    pseudonym_key: SecretStr = SecretStr("")
    """When set, every user id is replaced by a keyed hash of it (HMAC-SHA-256 under this key,
    `p:` and 32 hex digits) before it becomes a state key: the tables, their changelogs, the
    remembered lists and the recommendations topic (key and `user_id`) hold pseudonyms only.
    Producers and the pull API keep using the real ids. Changing or losing the key orphans
    every user's state (docs/operations.md, "Pseudonymous user ids")."""

    deadletter_redact: bool = False
    """Dead letters of the user-keyed topics (events, feedback, users) keep neither key nor
    value, only the headers: reason, detail, source topic, partition and offset (where the
    original can be read while the source topic keeps it) and the original sizes. Item
    records are kept whole."""

    min_event_time: int = Field(default=631_152_000_000, ge=0)
    """Earliest accepted event time, epoch milliseconds (default 1990-01-01)."""

    max_clock_skew_seconds: float = Field(default=86_400.0, ge=0)
    """How far in the future an event time may lie before it is rejected."""

    dedup_window: int = Field(default=128, ge=1, le=65_536)
    """Event ids remembered per key to drop an event sent twice (a producer's retry: two
    offsets). Input read again after a fault is dropped by its position, however far back."""

    # --- Processing -------------------------------------------------------------------
    batch_max: int = Field(default=1000, ge=1)
    """Most records an agent takes at once."""

    batch_within_seconds: float = Field(default=0.01, gt=0)
    """Longest an agent waits to fill a batch at ordinary rates."""

    batch_backlog_seconds: float = Field(default=0.05, gt=0)
    """Longest an agent waits to fill a batch while working off a backlog (``batch_max``
    more records waiting on the broker and fewer than at the last batch, the batch still
    filling fast): bigger batches, fewer recommendations for states the next batch
    replaces (docs/pipeline.md)."""

    commit_interval_seconds: float = Field(default=2.8, gt=0)
    """How often a worker commits its input offsets (Faust's default, 2.8 s). What a
    killed worker re-reads on restart is at most this much input (deduplicated by event
    id); the benchmark commits every 0.5 s to time the end of a backlog precisely."""

    changelog_buffer_mb: float = Field(default=16.0, ge=0)
    """State writes held until the next commit, at most this many MiB per worker (Kafka
    Streams' record cache): a key written again meanwhile sends only its newest value to
    its changelog, so a user with several events in a commit interval costs one changelog
    record, not one per event. The commit waits for the held writes (an input offset is
    committed only once the state of every record before it is on the changelog); past
    the bound the oldest are sent at once. Standby replicas see a key's newest state up to
    one commit interval later. 0: every write sent at once."""

    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """``at_least_once``: a killed worker re-reads its uncommitted input; state stays exact
    (the duplicate filter), a recommendation list may be published again.
    ``exactly_once`` (experimental): Kafka transactions (one producer per input partition):
    changelog writes, recommendations and input offsets commit together, so consumers
    reading ``read_committed`` see a list once. Holds for a killed worker and across
    rebalances; not yet after broker restarts under load (docs/operations.md,
    "Exactly-once processing"). Not on the embedded broker (no transactions)."""

    compression: Literal["none", "gzip", "lz4", "zstd"] = "zstd"
    """How the worker's producer compresses what it writes to Kafka (its changelogs,
    recommendations and dead letters): record batches as the broker stores them, read
    back by any Kafka client (zstd at level 3, Kafka's default; BENCHMARKS.md, "Fewer
    bytes to Kafka", for what it saves and costs). ``streamrec_written_bytes_total``
    counts the bytes before compression."""

    standby_replicas: int = Field(default=1, ge=0, le=8)
    """Standby copies of each table partition kept warm on other workers (Faust's
    ``table_standby_replicas``): a fail-over then replays only what the standby missed."""

    recommendation_size: int = Field(default=10, ge=1, le=1000)
    """Items per published recommendation."""

    experiment: str = Field(default="ranker", min_length=1, max_length=64)
    """Name of the running A/B experiment: users are split among its variants by a keyed
    hash of their id (the same split on every worker); a new name reshuffles them."""

    experiment_variants: str = Field(default="frozen=0.5,learning=0.5",
                                     pattern=r"^[a-z0-9_-]+=[0-9.]+(,[a-z0-9_-]+=[0-9.]+)*$")
    """The experiment's variants and their shares, ``name=share,...``. The ``learning``
    variant is served the online learner's newest version, every other variant the
    defaults (docs/feedback.md); a share of 0 for ``learning`` stops serving learnt ones."""

    shown_items: int = Field(default=10, ge=1, le=100)
    """Top items of each published list remembered for attribution: feedback on them
    teaches the learner, and they count as the list's impressions for click-through."""

    learning_rate: float = Field(default=0.5, gt=0)
    """The online learner's initial step size (it decays with the steps taken)."""

    behaviour_sample: float = Field(default=0.0, ge=0, le=1)
    """Share of users' item events (sampled by event id) whose item teaches the learner:
    preferred to ``behaviour_negatives`` of the candidates the user had just before it
    (app.core.learning). Off by default: at 0.02 (what the replays run: learning vs frozen
    on MovieLens-1M +13.0% NDCG@10 against ``default-2``'s weights, noise around zero
    against ``default-3``'s, which start where that learning went; docs/feedback.md) the
    pipeline benchmark's throughput fell from ~10,000
    to 6,352 events/s (BENCHMARKS.md); 0 learns from feedback on lists alone. Only while
    the experiment has a ``learning`` variant."""

    behaviour_negatives: int = Field(default=20, ge=1, le=200)
    """Candidates each sampled next item is preferred to (drawn uniformly)."""

    projection_learning_rate: float = Field(default=0.05, ge=0)
    """Step size of the online learning of the projection W1 (the design's
    s = cos(W1 u + b1, W2 r + b2)) from the same sampled next items: the user's interest
    just before the event and its item, a softmax over the catalogue (app.core.tuning);
    0 leaves W1 to `streamrec tune`. Nothing is learnt while ``behaviour_sample`` is 0."""

    projection_every_seconds: float = Field(default=5.0, gt=0)
    """The trainer publishes its newest projection at most this often (a d x d float16
    matrix on the models topic: 288 KB at d = 384); versions in between name the last one
    published."""

    generation_impressions: int = Field(default=2_000, ge=1)
    """Items a generation of learnt versions shows before it is kept as a checkpoint and its
    predecessor judged (app.core.versions: rollback on significantly lower click-through)."""

    exploration_epsilon: float = Field(default=0.0, ge=0, le=1)
    """Share of the learning variant's lists that give one slot to an item ranked just below
    the list (the learner sees feedback on what it would not have shown). Off by default."""

    pull_cache_users: int = Field(default=50_000, ge=0)
    """Users whose latest computed list a worker keeps to answer pulls without scoring
    again (0: always score; ~1.5 KB a user at 10 items)."""

    pull_cache_seconds: float = Field(default=30.0, ge=0)
    """Age at which a cached list is scored again (the user's own state must also be
    unchanged): a pull that finds it older still gets it, and the user is scored afresh
    right after the answer (stale-while-revalidate; 0: every pull is scored)."""

    ann_threshold: int = Field(default=200_000, ge=0)
    """Catalogue size from which nearest-neighbour search is approximate (usearch HNSW)
    instead of exact; see BENCHMARKS.md (`streamrec bench index`)."""

    candidate_sources: str = Field(
        default="encoder,covisit,popular,sequence,trending",
        pattern=r"^(encoder|covisit|popular|sequence|trending)"
                r"(,(encoder|covisit|popular|sequence|trending))*$")
    """Candidate sources, comma-separated (ablations). Without `encoder` the ranker's
    semantic term is off too; without `covisit`, its co-visitation term; without
    `sequence` (or with no behaviour model), the behaviour model's; without `trending`,
    a user coming back after a while is ranked as if they had never left."""

    behaviour_model: Path | None = None
    """A behaviour model exported by `streamrec train` (its folder, with manifest.json):
    its user vector becomes a candidate source and its score a ranker feature
    (docs/behaviour-model.md). Unset: no model, the ranker as before."""

    behaviour_scale_sample: float = Field(default=0.5, ge=0, le=1)
    """Share of lists (by the id of the event behind them) also ranked at every scale of the
    behaviour model's weight in the ranker, each scored by the user's next item, so that a
    worker serves the scale its users' next items favour (app.core.weighing): a young
    model trained on the stream weighs little, a grown one more. Each such list costs ~9%
    more (the other scales' top 10 ranked together; ML-1M, a model served). 0: the model
    is served at the scale its artefact chose (`streamrec model tune`; 1 without one)."""

    covisit_edges: int = Field(default=100, ge=10, le=10_000)
    """Neighbours each item keeps in the co-visitation graph (the strongest, once it holds
    twice as many): memory is at most items x 2 x this x 16 bytes (300: ~10 KB per item).
    Pruned edges restart from 0, so a small bound loses the long tail of what follows an
    item (MovieLens-1M stand-in with the online learner: NDCG@10 0.142 at 100, 0.156 at
    300; the replays run 300). 300 also cost the pull API's p99 (3.4 -> 101 ms in the
    pipeline benchmark, not yet profiled), hence 100 by default."""

    # --- Storage and model ------------------------------------------------------------
    data_dir: Path = Path("var/streamrec")
    """Worker state (RocksDB tables) lives below this folder."""

    rocksdb_write_buffer_mb: int = Field(default=4, ge=1, le=1024)
    """Size of one RocksDB write buffer (memtable), in MiB, for each partition of each state
    table a worker holds (4 tables x its partitions). Faust's default is 64."""

    rocksdb_write_buffers: int = Field(default=2, ge=2, le=16)
    """Write buffers kept per table partition before writes stall on a flush (Faust's
    default is 3)."""

    rocksdb_block_cache_mb: int = Field(default=8, ge=1, le=65_536)
    """RocksDB block cache, in MiB, per partition of each state table (Faust's default is
    2,048: up to 2 GiB per table partition). A worker's table memory is bounded by
    4 x partitions held x (write buffer x buffers + cache): 128 MiB for the 8 partitions of
    the defaults."""

    model_path: Path = Path("models/minilm-l6-int8")
    """Folder of the ONNX encoder artifact (model.onnx, tokenizer.json, manifest.json)."""

    # --- Web and timeouts -------------------------------------------------------------
    web_host: str = "127.0.0.1"
    """Address of the worker's HTTP server (metrics, health, API)."""

    web_port: int = Field(default=6066, ge=1, le=65535)
    """Port of the worker's HTTP server."""

    web_canonical_url: str = ""
    """How other workers reach this one (request routing). Empty: `http://WEB_HOST:WEB_PORT`,
    or the host name when WEB_HOST is 0.0.0.0."""

    web_idle_timeout_seconds: float = Field(default=15.0, gt=0, le=3600)
    """A connection to the worker's HTTP server that sends no complete request for this long
    (from its start or since its last response) is closed: idle and half-sent connections
    do not pile up (aiohttp's own default is an hour)."""

    api_token: SecretStr = SecretStr("")
    """When set, the API's routes (/users/..., /items/..., /model) answer only requests with
    `Authorization: Bearer <token>` (401 otherwise); /metrics, /health and /ready stay open.
    A request forwarded to the worker that owns the user carries the header, and the owner
    checks it too. Empty: no authentication (keep the port private)."""

    web_faust_routes: bool = False
    """Also serve Faust's own routes: /table/<table>/<key>/ (a user's raw state) and
    /router/ (the cluster layout). For debugging only: they need no token."""

    session_timeout_seconds: float = Field(default=30.0, gt=0)
    """Consumer group session timeout (the embedded broker uses at most 10 s)."""

    item_stats: Literal["local", "global"] = "local"
    """Where the co-visitation graph and popularity come from. ``local``: each worker
    counts the events of its own partitions (with N workers, ~1/N of the evidence: 4
    workers lost 9-29% of NDCG@10, BENCHMARKS.md "Many workers"). ``global``: each batch's
    evidence, summed per item, goes to the ``item-evidence`` topic (partitioned by item),
    which every worker merges into its own copy of the whole graph; the worker owning an
    item's partition also keeps the item's entry in the ``item-stats`` table, whose
    compacted changelog is the snapshot a starting worker loads first (docs/pipeline.md,
    "Global item statistics"). Popularity per profile segment follows the same
    setting; trending (counts over sliding windows of 1-27 days) stays per worker
    either way."""

    item_stats_flush_seconds: float = Field(default=10.0, gt=0, le=60)
    """With ``item_stats=global``: how long an item's owner gathers evidence before it
    writes the snapshot entries of the items that changed (once each, however many records
    touched them). Running workers merge the evidence itself, so this does not delay them:
    longer means fewer writes, and a starting worker merging up to that much more evidence
    after the snapshot."""

    request_timeout_seconds: float = Field(default=40.0, gt=0)
    """Kafka request timeout."""

    stop_deadline_seconds: float = Field(default=20.0, gt=0)
    """How long a worker asked to stop (SIGTERM/SIGINT) may take before it ends itself: a
    stop waits on the broker, for a minute and more when it has gone. What a worker ends
    with is what a SIGKILL leaves (the changelog restores it). Keep it under the platform's
    kill deadline (`stop_grace_period: 30s` in docker-compose.yml)."""

    log_level: str = "info"
    """Worker log level (debug, info, warning, error)."""

    @property
    def exactly_once(self) -> bool:
        """True when input, state and outputs commit together in Kafka transactions."""
        return self.processing_guarantee == "exactly_once"

    @property
    def embedded(self) -> bool:
        """True when no broker is configured and the embedded broker is used."""
        return not self.broker_url.strip()

    def ab_test(self) -> Experiment:
        """The running experiment, from ``experiment`` and ``experiment_variants``."""
        shares = dict(pair.split("=") for pair in self.experiment_variants.split(","))
        return Experiment(self.experiment, {k: float(v) for k, v in shares.items()})

    def bootstrap_servers(self) -> str:
        """`host:port,...` without a scheme, for aiokafka."""
        if self.embedded:
            return f"127.0.0.1:{self.embedded_port}"
        servers = [s.strip().removeprefix("kafka://") for s in self.broker_url.split(",")]
        return ",".join(s for s in servers if s)

    @classmethod
    def topic_names(cls) -> tuple[str, ...]:
        """The logical names of every topic setting (``events`` for ``topic_events``, ...)."""
        return tuple(name.removeprefix("topic_") for name in cls.model_fields
                     if name.startswith("topic_"))

    def input_topics(self) -> tuple[str, ...]:
        """The topics the worker's consumer group reads (the evidence topic too with global
        item statistics)."""
        inputs = (self.topic_events, self.topic_items, self.topic_feedback, self.topic_users)
        return (*inputs, self.topic_evidence) if self.global_items else inputs

    @property
    def global_items(self) -> bool:
        """True when item statistics are shared by every worker (``item_stats=global``)."""
        return self.item_stats == "global"

    def canonical_url(self) -> str:
        if self.web_canonical_url:
            return self.web_canonical_url
        host = socket.gethostname() if self.web_host in ("0.0.0.0", "::") else self.web_host  # noqa: S104
        return f"http://{host}:{self.web_port}"

    def model_dir(self) -> Path:
        """The encoder folder; a relative path is tried from the working directory, then
        from the project root (so `streamrec worker` works from anywhere in a checkout)."""
        if self.model_path.is_absolute() or self.model_path.exists():
            return self.model_path
        return Path(__file__).resolve().parents[1] / self.model_path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def settings_markdown() -> str:
    """The settings table for docs/configuration.md, generated from the class."""
    lines = [
        "| variable | default | meaning |",
        "| --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            shown = '""' if not default.get_secret_value() else "(secret)"
        elif default is None:
            shown = "(unset)"
        elif isinstance(default, StrEnum):
            shown = f"`{default.value}`"
        elif default == "":
            shown = '""'
        else:
            shown = f"`{default}`"
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {doc} |")
    return "\n".join(lines) + "\n"
