"""End to end on Apache Kafka: a catalogue and a user's events in, ranked, filtered and
explained recommendations out, produced and read with plain Kafka clients."""

from __future__ import annotations

import asyncio
import time

import msgspec

from app.broker.apache import KafkaBroker
from app.contract.records import (
    Feedback,
    FeedbackType,
    ItemUpsert,
    Purchase,
    Recommendation,
    Search,
    UserProfile,
    View,
)
from app.core.experiments import variant_of
from app.metrics import scrape
from app.settings import Settings
from app.worker import api
from tests.support.kafka_io import produce, read_topic
from tests.support.worker import WorkerProcess

TS = 1_700_000_000_000
CATALOGUE = {
    "alien": ("Alien", "sci-fi", "A crew in deep space meets a deadly alien creature."),
    "aliens": ("Aliens", "sci-fi", "Marines fight an alien swarm on a distant colony planet."),
    "interstellar": ("Interstellar", "sci-fi", "Astronauts travel through a wormhole in space."),
    "gravity": ("Gravity", "sci-fi", "Two astronauts are stranded in orbit after debris hits."),
    "toy-story": ("Toy Story", "kids", "Toys come to life when the children leave the room."),
    "cars": ("Cars", "kids", "A race car learns about friendship in a small desert town."),
    "notebook": ("The Notebook", "romance", "A love story that lasts a lifetime."),
    "titanic": ("Titanic", "romance", "Two lovers meet on the doomed ocean liner."),
}


def _lag_series(worker: WorkerProcess, topic: str, within: float = 20.0) -> dict[str, float]:
    """The consumer-lag gauge of every partition of ``topic`` (refreshed every 5 s) once it
    reads 0 everywhere (the records not yet committed: the commit follows the work by up
    to its interval), or as it last read after ``within`` seconds."""
    deadline = time.monotonic() + within
    found: dict[str, float] = {}
    while time.monotonic() < deadline and not (found and not any(found.values())):
        samples = scrape(worker.base_url + "/metrics")
        found = {dict(labels)["partition"]: value
                 for (name, labels), value in samples.items()
                 if name == "streamrec_consumer_lag_records" and dict(labels)["topic"] == topic}
        time.sleep(0.5)
    return found


def _items() -> list[tuple[bytes | None, bytes | None]]:
    return [
        (item.encode(), msgspec.json.encode(ItemUpsert(
            v=1, event_id=f"c-{item}", item_id=item, ts=TS, title=title, category=category,
            description=description)))
        for item, (title, category, description) in CATALOGUE.items()
    ]


def test_events_become_explained_filtered_recommendations(kafka: KafkaBroker,
                                                          worker: WorkerProcess) -> None:
    env = worker.env
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items()))
    worker.wait_metric("streamrec_catalogue_items", len(CATALOGUE))

    user = "space-fan"
    events = [
        View(v=1, event_id="e1", user_id=user, ts=TS + 1, item_id="alien"),
        Search(v=1, event_id="e2", user_id=user, ts=TS + 2, query="astronauts lost in space"),
        Purchase(v=1, event_id="e3", user_id=user, ts=TS + 3, item_id="interstellar",
                 price=9.99),
    ]
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"],
                        [(user.encode(), msgspec.json.encode(e)) for e in events]))
    worker.wait_metric("streamrec_input_records_total", 3, topic="events", outcome="accepted")
    worker.wait_metric("streamrec_recommendations_total", 1)

    records = asyncio.run(read_topic(kafka.bootstrap, env["STREAMREC_TOPIC_RECOMMENDATIONS"],
                                     expect=1))
    decoded = [msgspec.json.decode(r.value, type=Recommendation) for r in records]
    assert all(r.key == user.encode() for r in records)
    final = [r for r in decoded if r.source_event_id == "e3"]
    assert final, [r.source_event_id for r in decoded]
    rec = final[-1]
    ranked = [i.item_id for i in rec.items]
    assert "interstellar" not in ranked            # bought: filtered out
    assert "alien" not in ranked                   # seen: left out by default
    assert set(ranked[:2]) == {"gravity", "aliens"}  # the other space films first
    assert len(ranked) == len(set(ranked)) == len(CATALOGUE) - 2
    reasons = {i.item_id: i.explanation.text for i in rec.items}
    assert reasons["gravity"] == "matches your search 'astronauts lost in space'"
    assert [i.rank for i in rec.items] == list(range(1, len(rec.items) + 1))
    assert all(i.explanation.text for i in rec.items)
    assert {i.explanation.kind for i in rec.items} <= {"history", "search", "covisit",
                                                       "popular"}
    assert rec.model_version
    assert rec.produced_at >= rec.source_event_time
    assert rec.user_id == user
    assert rec.rec_id
    assert worker.metric("streamrec_event_to_recommendation_seconds_count") >= 1
    assert worker.metric("streamrec_candidates_total", source="encoder") > 0
    lag_series = _lag_series(worker, env["STREAMREC_TOPIC_EVENTS"])
    assert lag_series, "no consumer-lag series for the events topic"
    assert all(value == 0 for value in lag_series.values())
    worker.wait_metric("streamrec_table_keys", 1, table="user-state")  # one user
    worker.wait_metric("streamrec_table_keys", 1, table="item-state")
    # feedback on the list is counted by the user's A/B variant (the same split everywhere)
    rec = decoded[-1]
    feedback = [Feedback(v=1, type=kind, event_id=f"f-{kind}", user_id=user, rec_id=rec.rec_id,
                         item_id=rec.items[0].item_id, ts=TS + 10)
                for kind in (FeedbackType.IMPRESSION, FeedbackType.CLICK)]
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_FEEDBACK"],
                        [(user.encode(), msgspec.json.encode(f)) for f in feedback]))
    variant = variant_of(Settings().ab_test(), user)
    worker.wait_metric("streamrec_feedback_total", 1, variant=variant, type="click")
    worker.wait_metric("streamrec_feedback_total", 1, variant=variant, type="impression")
    other = ({"frozen", "learning"} - {variant}).pop()
    assert worker.metric("streamrec_feedback_total", variant=other) == 0


def test_pull_api(kafka: KafkaBroker, worker: WorkerProcess) -> None:
    import json

    env = worker.env
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items()))
    worker.wait_metric("streamrec_catalogue_items", len(CATALOGUE))
    user = "kid"
    events = [View(v=1, event_id=f"k{i}", user_id=user, ts=TS + i, item_id=item)
              for i, item in enumerate(["toy-story", "alien"])]
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"],
                        [(user.encode(), msgspec.json.encode(e)) for e in events]))
    # counted once their batch is folded and its recommendations published
    worker.wait_metric("streamrec_input_records_total", 2, topic="events", outcome="accepted")

    def get(path: str) -> tuple[int, dict]:
        """The answer, decoded as well with the model the OpenAPI document names for its
        route and status (an undocumented field or status fails)."""
        status, body = worker._get(path)
        template = next(r for r in api.ROUTES if _matches(r.path, path.partition("?")[0]))
        model = template.answers[status]
        assert model is not None
        msgspec.json.decode(body, type=model)
        return status, json.loads(body)

    status, body = get("/users/kid/recommendations?k=3")
    assert status == 200
    assert body["known_user"] is True
    assert len(body["items"]) == 3
    # answered from the list computed after kid's last event: the same as scoring afresh
    worker.wait_metric("streamrec_pull_cache_total", 1, outcome="hit")
    assert get("/users/kid/recommendations?k=3&fresh=true")[1]["items"] == body["items"]
    assert not {"toy-story", "alien"} & {i["item_id"] for i in body["items"]}
    status, body = get("/users/kid/recommendations?k=5&category=kids&include_seen=true")
    assert {i["item_id"] for i in body["items"]} == {"toy-story", "cars"}
    status, body = get("/users/kid/recommendations?k=5&not_category=sci-fi,romance")
    assert {i["item_id"] for i in body["items"]} == {"cars"}
    status, body = get("/users/nobody-yet/recommendations?k=2")
    assert status == 200
    assert body["known_user"] is False
    assert [i["explanation"]["kind"] for i in body["items"]] == ["popular", "popular"]
    assert get("/users/kid/recommendations?k=0") == (
        400, {"error": "k: expected `int` >= 1", "code": "bad_parameter"})
    assert get("/users/kid/recommendations?categroy=kids") == (
        400, {"error": "unknown query parameter `categroy`", "code": "bad_parameter"})
    assert get("/users/nobody-yet") == (404, {"error": "unknown user", "code": "unknown_user"})
    status, body = get("/users/kid")
    assert [r["item_id"] for r in body["recent"]] == ["toy-story", "alien"]
    status, body = get("/items/alien")
    assert status == 200
    assert body["similar"][0]["item_id"] in {"aliens", "gravity", "interstellar"}
    assert get("/items/unknown") == (404, {"error": "unknown item", "code": "unknown_item"})
    assert get("/model")[1]["experiment"]
    assert get("/health") == (200, {"status": "ok"})
    assert get("/ready") == (200, {"ready": True})
    assert worker._get("/openapi.json") == (200, msgspec.json.encode(api.openapi()))
    # a new user whose profile is known gets what their segment likes: once "kid" is known
    # to be 1-12, what kid watched and watches counts for that age band; "tot", also 1-12 and
    # with no history, gets those first, explained (whether the counts came incrementally or
    # from a regrowth of memory after a rebalance: both count the same)
    profiles = [(u.encode(), msgspec.json.encode(UserProfile(
        v=1, event_id=f"p-{u}", user_id=u, ts=TS, age_band="1-12"))) for u in ("kid", "tot")]
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_USERS"], profiles))
    worker.wait_metric("streamrec_input_records_total", 2, topic="users", outcome="accepted")
    later = [View(v=1, event_id="k9", user_id="kid", ts=TS + 9, item_id="cars")]
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"],
                        [(b"kid", msgspec.json.encode(e)) for e in later]))
    worker.wait_metric("streamrec_input_records_total", 3, topic="events", outcome="accepted")
    status, body = get("/users/tot/recommendations?k=3")
    assert body["known_user"] is False
    assert {i["item_id"] for i in body["items"]} == {"toy-story", "alien", "cars"}
    assert {i["explanation"]["text"] for i in body["items"]} == {"popular with people like you"}
    # a new user's answer depends on their segments: the list cached before their profile
    # arrived is not served after it (the next pull scores afresh)
    kit = [View(v=1, event_id="kit-1", user_id="kit", ts=TS + 20, item_id="alien")]
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"],
                        [(b"kit", msgspec.json.encode(e)) for e in kit]))
    worker.wait_metric("streamrec_input_records_total", 4, topic="events", outcome="accepted")
    hits = worker.metric("streamrec_pull_cache_total", outcome="hit")
    misses = worker.metric("streamrec_pull_cache_total", outcome="miss")
    assert get("/users/kit/recommendations?k=10")[0] == 200
    assert worker.metric("streamrec_pull_cache_total", outcome="hit") == hits + 1
    kit_profile = UserProfile(v=1, event_id="p-kit", user_id="kit", ts=TS, age_band="1-12")
    asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_USERS"],
                        [(b"kit", msgspec.json.encode(kit_profile))]))
    worker.wait_metric("streamrec_input_records_total", 3, topic="users", outcome="accepted")
    after = get("/users/kit/recommendations?k=10")[1]["items"]
    assert worker.metric("streamrec_pull_cache_total", outcome="miss") == misses + 1
    assert after == get("/users/kit/recommendations?k=10&fresh=true")[1]["items"]
    # asked for a month after kit's last event (event time, `at`), kit is away: what is
    # trending (what the others watched) leads and says so; asked at kit's own time, nothing
    # is explained as trending
    def trending(at: int) -> list[str]:
        items = get(f"/users/kit/recommendations?k=5&at={at}")[1]["items"]
        return [i["item_id"] for i in items
                if i["explanation"]["text"] == "trending since your last visit"]

    assert trending(TS + 20) == []
    assert trending(TS + 20 + 30 * 86_400_000)[:1] in (["toy-story"], ["cars"])


def _matches(template: str, path: str) -> bool:
    """Whether a path is an instance of a route template (``{name}`` matches one segment)."""
    parts, given = template.split("/"), path.split("/")
    return len(parts) == len(given) and all(
        p.startswith("{") or p == g for p, g in zip(parts, given, strict=True))
