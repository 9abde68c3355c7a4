"""Talking to the cluster as an administrator: readiness, topics, cluster identity."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.broker.security import client_security
from app.errors import BrokerRefusedError, BrokerUnreachableError
from app.settings import Settings

log = logging.getLogger(__name__)

_TOPIC_EXISTS = 36
_COMPACTED = {"cleanup.policy": "compact"}
# the trainer's input: a restarted trainer resumes from its committed offset, a new one (a
# new app id) re-learns from what is kept here; a week bounds both the topic and that
_EXAMPLES = {"retention.ms": str(7 * 24 * 3600 * 1000)}
# versions every mini-batch, a ~300 KB projection up to every 5 s: segments roll every 10
# minutes so that compaction keeps what a starting worker reads to the live records
_MODELS = {**_COMPACTED, "segment.ms": str(10 * 60 * 1000),
           "min.cleanable.dirty.ratio": "0.1", "delete.retention.ms": str(3600 * 1000)}


STATE_TABLES = ("user-state", "item-state", "feedback-state", "profile-state", "item-stats")
"""The worker's tables, each backed by a compacted changelog topic."""


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog topic of a table, as Faust names it."""
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """StreamRec's own topics. The user-keyed ones have the same partition count: they must
    be co-partitioned so that one user's records and state meet on one partition. The
    learner's two topics have one partition: one trainer, one ordered list of versions.
    The tables' changelogs are created here too, co-partitioned, before any worker consumes:
    left to Faust, a fresh worker could see a changelog without its partitions at its first
    assignment and refuse every write to that table ("PartitionsMismatch") until it
    refreshed its metadata minutes later."""
    n = settings.partitions
    changelogs = [TopicSpec(changelog_topic(settings.app_id, table), n, dict(_COMPACTED))
                  for table in STATE_TABLES]
    return [
        TopicSpec(settings.topic_events, n, {}),
        TopicSpec(settings.topic_items, n, dict(_COMPACTED)),
        TopicSpec(settings.topic_feedback, n, {}),
        TopicSpec(settings.topic_users, n, dict(_COMPACTED)),
        TopicSpec(settings.topic_recommendations, n, {}),
        TopicSpec(settings.topic_deadletter, n,
                  {"retention.ms": str(int(settings.deadletter_retention_hours * 3600_000))}),
        TopicSpec(settings.topic_catalogue, n, dict(_COMPACTED)),
        TopicSpec(settings.topic_examples, 1, dict(_EXAMPLES)),
        TopicSpec(settings.topic_models, 1, dict(_MODELS)),
        TopicSpec(settings.topic_evidence, n, {"retention.ms": str(24 * 3600 * 1000)}),
        *changelogs,
    ]


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers(),
        request_timeout_ms=int(settings.request_timeout_seconds * 1000),
        **client_security(settings),
    )


async def wait_until_ready(settings: Settings, within: float | None = None
                           ) -> dict[str, Any]:
    """Poll the cluster until it answers a metadata request; return its description.
    Gives up after ``within`` seconds (the ``connect_timeout_seconds`` setting by default)
    with :class:`BrokerUnreachableError`, one line naming the address; the client's own
    "Unable connect" lines are kept out of the log while it polls."""
    within = settings.connect_timeout_seconds if within is None else within
    deadline = time.monotonic() + within
    last: Exception | None = None
    resets = 0
    with _captured("aiokafka") as said:
        while time.monotonic() < deadline:
            admin = _admin(settings)
            try:
                await admin.start()
                cluster: dict[str, Any] = await admin.describe_cluster()
                if cluster.get("brokers"):
                    return cluster
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
            finally:
                await admin.close()
            tls = settings.security_protocol.value.endswith("SSL")
            resets = resets + 1 if tls and any("[ConnectionResetError]" in m for m in said) \
                else 0
            refusal = security_refusal(settings, said, resets)
            if refusal is not None:   # waiting longer cannot help: say why, now
                raise BrokerRefusedError(refusal)
            said.clear()
            await asyncio.sleep(0.25)
    source = "STREAMREC_BROKER_URL" if settings.broker_url.strip() else "the embedded broker"
    why = f"{type(last).__name__}: {last}" if last is not None else "no broker listed"
    raise BrokerUnreachableError(
        f"cannot reach Kafka at {settings.bootstrap_servers()} ({source}) within "
        f"{within:g} s ({why}); check the address and that the broker is up "
        "(STREAMREC_CONNECT_TIMEOUT_SECONDS waits longer)")


TLS_RESETS = 3   # a TLS handshake reset this many times in a row: a plaintext port


def security_refusal(settings: Settings, said: list[str], resets: int = 0) -> str | None:
    """One line for a connection the broker (or this client) refused for its credentials or
    its certificate, from what the Kafka client logged; None for anything else (a broker
    not up yet is worth waiting for; these are not). ``resets``: attempts in a row whose
    TLS handshake the peer reset (a plaintext broker closes the connection on a TLS hello;
    one reset alone may be a broker going down)."""
    text = " ".join(said)
    where = f"Kafka at {settings.bootstrap_servers()}"
    if "SaslAuthenticationFailed" in text or "Authentication failed" in text:
        return (f"{where} refused the credentials ({settings.sasl_mechanism.value} as user "
                f"{settings.sasl_username!r}): check STREAMREC_SASL_USERNAME and "
                "STREAMREC_SASL_PASSWORD")
    if "UnsupportedSaslMechanism" in text:
        return (f"{where} does not take SASL mechanism {settings.sasl_mechanism.value}: check "
                "STREAMREC_SASL_MECHANISM")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        reason = text.split("certificate verify failed:", 1)[-1].split("(_ssl")[0].strip()
        return (f"{where} presented a TLS certificate this client does not trust ({reason}): "
                "set STREAMREC_SSL_CAFILE to the CA that signed it")
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text or (
            resets >= TLS_RESETS and "[ConnectionResetError]" in text):
        return (f"{where} does not speak TLS on that port (it closed the connection at the "
                f"TLS handshake): check STREAMREC_SECURITY_PROTOCOL "
                f"({settings.security_protocol.value}) and the port")
    return None


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        causes = "".join(f" [{type(a).__name__}]" for a in args if isinstance(a, BaseException))
        self.into.append(record.getMessage() + causes)


@contextlib.contextmanager
def _captured(logger: str) -> Iterator[list[str]]:
    """A library's warnings and errors, collected for the block instead of logged (its
    retries would log a line per attempt)."""
    target = logging.getLogger(logger)
    said: list[str] = []
    handler = _Collect(said)
    level, propagate = target.level, target.propagate
    target.setLevel(logging.WARNING)
    target.propagate = False
    target.addHandler(handler)
    try:
        yield said
    finally:
        target.removeHandler(handler)
        target.setLevel(level)
        target.propagate = propagate


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; fail loudly when an existing one has the wrong partition count.

    Returns the names of the topics that were created.
    """
    specs = topic_specs(settings)
    admin = _admin(settings)
    await admin.start()
    try:
        existing = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
        missing = [s for s in specs if s.name not in existing]
        for spec in specs:
            have = existing.get(spec.name)
            if have is not None and have != spec.partitions:
                raise RuntimeError(
                    f"topic {spec.name!r} has {have} partitions, StreamRec is configured for "
                    f"{spec.partitions}: co-partitioned topics must match "
                    "(set STREAMREC_PARTITIONS or repartition)"
                )
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, settings.replication_factor,
                             topic_configs=s.configs)
                    for s in missing
                ]
            )
            for name, code, *rest in response.topic_errors:
                if code not in (0, _TOPIC_EXISTS):
                    raise RuntimeError(f"creating topic {name!r} failed: error {code} {rest}")
        await _wait_for_leaders(admin, [s.name for s in missing])
        return [s.name for s in missing]
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    for _ in range(100):
        if not names:
            return
        topics = await admin.describe_topics(names)
        if all(t["error_code"] == 0 and t["partitions"] for t in topics) and all(
            p["leader"] >= 0 for t in topics for p in t["partitions"]
        ):
            return
        await asyncio.sleep(0.1)


async def partition_counts(settings: Settings, names: list[str]) -> dict[str, int]:
    """How many partitions each of ``names`` has (0: the topic does not exist)."""
    admin = _admin(settings)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        return {t["topic"]: (len(t["partitions"]) if t["error_code"] == 0 else 0)
                for t in described}
    finally:
        await admin.close()


async def cluster_id(settings: Settings) -> str:
    """The cluster id the brokers report (a new one after an embedded broker restart)."""
    cluster = await wait_until_ready(settings)
    return str(cluster.get("cluster_id") or "")


def end_tracker(ends: dict[tuple[str, int], int]) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback for producer sends that records, per (topic, partition), the next
    offset after every acknowledged record: the ends :class:`GroupLag` measures against."""

    def acknowledged(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            meta = future.result()
            key = (meta.topic, meta.partition)
            ends[key] = max(ends.get(key, 0), meta.offset + 1)

    return acknowledged


class GroupLag:
    """How far a consumer group's committed offsets trail given end offsets. The ends come
    from the producer's own acknowledgements, not from ListOffsets (which the embedded broker
    answers wrongly), so it is exact on every broker."""

    def __init__(self, settings: Settings, group: str) -> None:
        self._admin = _admin(settings)
        self.group = group

    async def start(self) -> None:
        await self._admin.start()

    async def close(self) -> None:
        await self._admin.close()

    async def lag(self, ends: Mapping[tuple[str, int], int]) -> int:
        """Records produced up to ``ends`` (next offset per (topic, partition)) that the group
        has not committed yet."""
        if not ends:
            return 0
        committed = await self._admin.list_consumer_group_offsets(
            self.group, partitions=[TopicPartition(t, p) for t, p in ends]
        )
        behind = 0
        for (topic, partition), end in ends.items():
            done = committed.get(TopicPartition(topic, partition))
            behind += max(0, end - (done.offset if done is not None and done.offset >= 0 else 0))
        return behind
