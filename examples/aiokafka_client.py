"""Talk to StreamRec with aiokafka: upsert catalogue items, send a user's view, read the
list StreamRec publishes for that view, and tell it the user clicked the first item.

    KAFKA_BOOTSTRAP=localhost:9092 python examples/aiokafka_client.py alice

Topic names follow the worker's settings (STREAMREC_TOPIC_*; defaults shown below).
aiokafka's default partitioner is Kafka's murmur2, the one StreamRec requires."""

import asyncio
import json
import os
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092")
TOPIC = {name: os.environ.get(f"STREAMREC_TOPIC_{name.upper()}", name)
         for name in ("items", "events", "feedback", "recommendations")}
ITEMS = {"alien": "Alien (1979)", "aliens": "Aliens (1986)", "heat": "Heat (1995)"}


async def main(user_id: str) -> None:
    now = int(time.time() * 1000)
    event_id = f"view-{uuid.uuid4()}"
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all",
                                enable_idempotence=True)
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)   # no group: assigned below
    await producer.start()
    await consumer.start()
    try:
        # read recommendations from what the topic holds now on (before sending the view)
        partitions = [TopicPartition(TOPIC["recommendations"], p) for p in
                      sorted(await producer.partitions_for(TOPIC["recommendations"]))]
        consumer.assign(partitions)
        for tp, end in (await consumer.end_offsets(partitions)).items():
            consumer.seek(tp, end)
        for item_id, title in ITEMS.items():
            upsert = {"v": 1, "op": "upsert", "event_id": f"upsert-{item_id}",
                      "item_id": item_id, "ts": now, "title": title, "category": "film"}
            await producer.send_and_wait(TOPIC["items"], json.dumps(upsert).encode(),
                                         key=item_id.encode())
        view = {"v": 1, "type": "view", "event_id": event_id, "user_id": user_id,
                "ts": now, "item_id": "alien"}
        await producer.send_and_wait(TOPIC["events"], json.dumps(view).encode(),
                                     key=user_id.encode())
        async with asyncio.timeout(30):
            async for record in consumer:
                listed = json.loads(record.value)
                if listed["source_event_id"] == event_id:   # the list made after our view
                    break
        print(f"recommendations for {user_id}:",
              ", ".join(i["item_id"] for i in listed["items"]))
        if listed["items"]:
            click = {"v": 1, "event_id": f"click-{uuid.uuid4()}", "user_id": user_id,
                     "ts": int(time.time() * 1000), "type": "click",
                     "rec_id": listed["rec_id"], "item_id": listed["items"][0]["item_id"],
                     "position": 0}
            await producer.send_and_wait(TOPIC["feedback"], json.dumps(click).encode(),
                                         key=user_id.encode())
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "alice"))
