"""The StreamRec event job written with Quix Streams, the peer in `streamrec bench pipeline`.

The same work as a StreamRec worker's event path, on the same pure core: validate the raw
event, fold it into the user's state (stored as the same bytes, in Quix's RocksDB state
with its changelog topic), learn co-visitation and popularity, rank and publish one
recommendation. Quix Streams processes one message at a time, so this is also what
"idiomatic Quix" looks like for the job. The catalogue is read once from the `catalogue`
topic at start. Not a product path: no dead-letter routing (the benchmark sends no bad
input) and no HTTP API.

    python -m app.peers.quix_job      # reads the same STREAMREC_* settings as a worker
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from confluent_kafka import Consumer, TopicPartition
from quixstreams import Application
from quixstreams.state.rocksdb import RocksDBOptions

from app.contract.records import Search
from app.contract.validate import Rejection, validators
from app.core.recommender import Catalogue, Request
from app.core.serving import apply_catalogue_record, now_ms, recommend_after
from app.core.state import EventContext, StateCodec, UserState, apply_batch, event_fold
from app.encoder.runtime import Encoder
from app.settings import Settings, get_settings
from app.worker.agents import limits
from app.worker.main import one_blas_thread
from app.worker.pipeline import make_recommender

log = logging.getLogger(__name__)


def load_catalogue(settings: Settings, catalogue: Catalogue, within: float = 120.0) -> int:
    """Read the whole compacted catalogue topic into ``catalogue``; returns its size."""
    consumer = Consumer({
        "bootstrap.servers": settings.bootstrap_servers(),
        "group.id": f"{settings.app_id}-catalogue",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    try:
        metadata = consumer.list_topics(settings.topic_catalogue, timeout=30)
        partitions = [TopicPartition(settings.topic_catalogue, p, 0)
                      for p in metadata.topics[settings.topic_catalogue].partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=30)[1]
                for p in partitions}
        consumer.assign(partitions)
        position = {p: 0 for p in ends}
        deadline = time.monotonic() + within
        while any(position[p] < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError("the catalogue topic was not read in time")
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error():
                    continue
                apply_catalogue_record(catalogue, message.key(), message.value())
                position[message.partition()] = message.offset() + 1
    finally:
        consumer.close()
    return len(catalogue.index)


def build(settings: Settings) -> Application:
    encoder = Encoder(settings.model_dir())
    recommender = make_recommender(settings, encoder.dimension)
    log.info("catalogue: %d items", load_catalogue(settings, recommender.catalogue))
    check = validators(limits(settings)).events
    codec = StateCodec(UserState)
    request = Request(k=settings.recommendation_size)
    encode = msgspec.json.Encoder().encode

    def process(value: bytes, key: bytes, timestamp: int, headers: Any, state: Any
                ) -> bytes | None:
        event = check(key, value, now_ms())
        if isinstance(event, Rejection):
            return None
        queries = {event.query: encoder.encode_query(event.query)} \
            if isinstance(event, Search) else {}
        fold = event_fold(EventContext(item_vector=recommender.catalogue.index.vector,
                                       query_vectors=queries, dimension=encoder.dimension))
        before = codec.decode(state.get(b"user"))
        result = apply_batch(before, [event], settings.dedup_window, fold)
        if not result.applied:
            return None
        state.set(b"user", codec.encode(result.state))
        record, _ = recommend_after(recommender, encoder, before, result.state,
                                    result.applied, request)
        return encode(record)

    app = Application(
        broker_address=settings.bootstrap_servers(),
        consumer_group=settings.app_id,
        auto_offset_reset="earliest",
        commit_interval=settings.commit_interval_seconds,  # as the Faust worker
        state_dir=str(settings.data_dir / "quix"),
        loglevel="WARNING",
        rocksdb_options=RocksDBOptions(dumps=bytes, loads=bytes),
    )
    events = app.topic(settings.topic_events, key_deserializer="bytes",
                       value_deserializer="bytes")
    output = app.topic(settings.topic_recommendations, key_serializer="bytes",
                       value_serializer="bytes")
    frame = app.dataframe(events).apply(process, stateful=True, metadata=True)
    frame.filter(lambda value: value is not None).to_topic(output)
    return app


def main() -> None:
    one_blas_thread()  # the same numpy work as the Faust worker, under the same limits
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    build(settings).run()


if __name__ == "__main__":
    main()
