"""Every Faust declaration of the worker, in one place: the App, its topics and tables.

Topics are declared raw (bytes in, bytes out): StreamRec validates and decodes input itself,
so that a malformed record becomes a dead letter instead of a Faust decode error. Table
values are msgpack bytes of the state structs in ``app.core.state``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from app.broker.admin import STATE_TABLES
from app.broker.embedded import SESSION_TIMEOUT_SECONDS
from app.broker.security import faust_credentials
from app.core.attribution import slot_keys
from app.core.privacy import Pseudonyms
from app.settings import Settings


@dataclass(frozen=True)
class Declarations:
    settings: Settings
    app: faust.App
    events: Any
    items: Any
    feedback: Any
    users: Any
    recommendations: Any
    deadletter: Any
    catalogue: Any
    examples: Any
    models: Any
    evidence: Any
    user_state: Any
    item_state: Any
    feedback_state: Any
    profile_state: Any
    item_stats: Any

    @property
    def user_key(self) -> Pseudonyms:
        """A user id's key in the user tables and on the recommendations topic: the id's
        bytes, or its pseudonym with STREAMREC_PSEUDONYM_KEY."""
        return Pseudonyms(self.settings.pseudonym_key.get_secret_value())

    def user_tables(self) -> tuple[Any, ...]:
        """The tables keyed by user id: what forgetting a user deletes."""
        return self.user_state, self.feedback_state, self.profile_state

    def user_keys(self, table: Any, key: bytes) -> list[bytes]:
        """A user's keys in one of the user tables: their key, and in the feedback table
        also the slots of their remembered lists (app.core.attribution)."""
        return [key, *slot_keys(key)] if table is self.feedback_state else [key]

    def tables(self) -> dict[str, Any]:
        """The state tables by their metric label."""
        return {"user-state": self.user_state, "item-state": self.item_state,
                "feedback-state": self.feedback_state, "profile-state": self.profile_state,
                "item-stats": self.item_stats}


def _app(settings: Settings) -> faust.App:
    servers = settings.bootstrap_servers().split(",")
    session_timeout = settings.session_timeout_seconds
    options: dict[str, Any] = {}
    if settings.embedded:
        # Tansu: JoinGroup waits ~half the session timeout; its ListOffsets latest offset is
        # only right when every producer batch holds one record (table recovery needs it).
        session_timeout = min(session_timeout, SESSION_TIMEOUT_SECONDS)
        options["producer_max_batch_size"] = 1
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in servers],
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        topic_disable_leader=True,
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=min(3.0, session_timeout / 3),
        broker_request_timeout=settings.request_timeout_seconds,
        broker_commit_interval=settings.commit_interval_seconds,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        canonical_url=settings.canonical_url(),
        web_in_thread=False,
        web_router_enabled=settings.web_faust_routes,   # /router/: the cluster layout
        web_tables_enabled=settings.web_faust_routes,   # /table/...: raw per-user state
        web_graph_enabled=False,
        autodiscover=False,
        processing_guarantee=settings.processing_guarantee,
        table_standby_replicas=settings.standby_replicas,
        producer_compression_type=None if settings.compression == "none"
        else settings.compression,
        **options,
    )


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """The memory bounds of one table's RocksDB databases (one per partition held)."""
    mib = 1024 * 1024
    return {"write_buffer_size": settings.rocksdb_write_buffer_mb * mib,
            "max_write_buffer_number": settings.rocksdb_write_buffers,
            "block_cache_size": settings.rocksdb_block_cache_mb * mib}


def declare(settings: Settings) -> Declarations:
    app = _app(settings)

    def raw_topic(name: str) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", allow_empty=True)

    def state_table(name: str, help_: str) -> Any:
        assert name in STATE_TABLES   # whose changelogs `streamrec topics` creates
        return app.Table(
            name,
            key_type=bytes,  # bytes types make Faust use the raw codec for the store and
            value_type=bytes,  # the changelog alike
            partitions=settings.partitions,
            help=help_,
            options=rocksdb_options(settings),   # a fresh dict: Faust's store pops from it
        )

    return Declarations(
        settings=settings,
        app=app,
        events=raw_topic(settings.topic_events),
        items=raw_topic(settings.topic_items),
        feedback=raw_topic(settings.topic_feedback),
        users=raw_topic(settings.topic_users),
        recommendations=raw_topic(settings.topic_recommendations),
        deadletter=raw_topic(settings.topic_deadletter),
        catalogue=raw_topic(settings.topic_catalogue),
        examples=raw_topic(settings.topic_examples),
        models=raw_topic(settings.topic_models),
        evidence=raw_topic(settings.topic_evidence),
        user_state=state_table("user-state", "UserState per user (msgpack)"),
        item_state=state_table("item-state", "ItemState per item (msgpack)"),
        feedback_state=state_table("feedback-state", "FeedbackState per user (msgpack)"),
        profile_state=state_table("profile-state", "ProfileState per user (msgpack)"),
        item_stats=state_table("item-stats", "ItemSummary per item: its edges, visits and "
                               "popularity (msgpack; item_stats=global)"),
    )

