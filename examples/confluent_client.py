"""Talk to StreamRec with confluent-kafka (librdkafka): upsert catalogue items, send a
user's view, read the list StreamRec publishes for that view, and tell it the user clicked
the first item.

    KAFKA_BOOTSTRAP=localhost:9092 python examples/confluent_client.py bob

librdkafka's default partitioner is not Kafka's murmur2: set ``partitioner`` to
``murmur2_random`` (as below), or StreamRec has to re-route every misplaced record
(streamrec_misrouted_total counts them)."""

import json
import os
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092")
TOPIC = {name: os.environ.get(f"STREAMREC_TOPIC_{name.upper()}", name)
         for name in ("items", "events", "feedback", "recommendations")}
ITEMS = {"alien": "Alien (1979)", "aliens": "Aliens (1986)", "heat": "Heat (1995)"}


def main(user_id: str) -> None:
    now = int(time.time() * 1000)
    event_id = f"view-{uuid.uuid4()}"
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"example-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    try:
        # read recommendations from what the topic holds now on (before sending the view)
        topic = TOPIC["recommendations"]
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=10)[1]) for p in sorted(partitions)])
        for item_id, title in ITEMS.items():
            upsert = {"v": 1, "op": "upsert", "event_id": f"upsert-{item_id}",
                      "item_id": item_id, "ts": now, "title": title, "category": "film"}
            producer.produce(TOPIC["items"], json.dumps(upsert).encode(), key=item_id.encode())
        view = {"v": 1, "type": "view", "event_id": event_id, "user_id": user_id,
                "ts": now, "item_id": "alien"}
        producer.produce(TOPIC["events"], json.dumps(view).encode(), key=user_id.encode())
        if producer.flush(10):
            raise SystemExit("the broker did not acknowledge the records within 10 s")
        deadline = time.monotonic() + 30
        listed = None
        while listed is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"no recommendations for {event_id} within 30 s")
            record = consumer.poll(1.0)
            if record is None or record.error():
                continue
            candidate = json.loads(record.value())
            if candidate["source_event_id"] == event_id:   # the list made after our view
                listed = candidate
        print(f"recommendations for {user_id}:",
              ", ".join(i["item_id"] for i in listed["items"]))
        if listed["items"]:
            click = {"v": 1, "event_id": f"click-{uuid.uuid4()}", "user_id": user_id,
                     "ts": int(time.time() * 1000), "type": "click",
                     "rec_id": listed["rec_id"], "item_id": listed["items"][0]["item_id"],
                     "position": 0}
            producer.produce(TOPIC["feedback"], json.dumps(click).encode(),
                             key=user_id.encode())
            producer.flush(10)
    finally:
        consumer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bob")
