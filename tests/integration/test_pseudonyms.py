"""STREAMREC_PSEUDONYM_KEY on Apache Kafka: producers and the pull API use real user ids,
but everything the worker writes about a user (the tables' changelogs, the recommendations
topic) holds only their keyed pseudonym; forgetting by real id deletes the pseudonymous
state."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgspec

from app.broker.admin import STATE_TABLES, changelog_topic
from app.broker.apache import KafkaBroker
from app.contract.records import UserProfile, View
from app.core.forgetting import is_marker
from app.core.privacy import Pseudonyms
from app.core.state import StateCodec, UserState
from tests.integration.test_recommendations import CATALOGUE, TS, _items
from tests.support.kafka_io import latest_by_key, produce, read_topic
from tests.support.worker import WorkerProcess, isolated_env

KEY = "a-secret-for-the-test"
USERS = ["alice.smith@example.com", "bob-1234"]


def test_stored_and_published_data_hold_pseudonyms_only(kafka: KafkaBroker,
                                                         tmp_path: Path) -> None:
    env = isolated_env(kafka.bootstrap, tmp_path / "data")
    env["STREAMREC_PSEUDONYM_KEY"] = KEY
    pseudonym = Pseudonyms(KEY)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items()))
        worker.wait_metric("streamrec_catalogue_items", len(CATALOGUE))
        events = [(u.encode(), msgspec.json.encode(View(v=1, event_id=f"e{n}-{i}", user_id=u,
                                                        ts=TS + i, item_id=item)))
                  for n, u in enumerate(USERS) for i, item in enumerate(("alien", "cars"))]
        profiles = [(u.encode(), msgspec.json.encode(UserProfile(
            v=1, event_id=f"p{n}", user_id=u, ts=TS, age_band="25-34")))
            for n, u in enumerate(USERS)]
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_USERS"], profiles))
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], events))
        worker.wait_metric("streamrec_recommendations_total", len(USERS))

        # the pull API takes the real id
        status, body = worker._get(f"/users/{USERS[0]}/recommendations")
        assert status == 200
        assert json.loads(body)["known_user"] is True
        status, body = worker._get(f"/users/{USERS[0]}")
        assert status == 200
        assert json.loads(body)["counts"] == {"view": 2}

        # nothing written holds a real id: keys and values of every changelog and the lists
        time.sleep(3)   # a commit interval: the changelogs are flushed
        app_id = env["STREAMREC_APP_ID"]
        written = {table: asyncio.run(latest_by_key(kafka.bootstrap,
                                                    changelog_topic(app_id, table)))
                   for table in ("user-state", "profile-state")}
        lists = asyncio.run(read_topic(kafka.bootstrap, env["STREAMREC_TOPIC_RECOMMENDATIONS"],
                                       expect=len(USERS)))
        for user in USERS:
            hidden = pseudonym(user.encode())
            assert hidden in written["user-state"]
            assert hidden in written["profile-state"]
            assert hidden in {r.key for r in lists}
            for table, records in written.items():
                for key, value in records.items():
                    assert user.encode() not in (key or b"") + (value or b""), table
            for record in lists:
                assert user.encode() not in (record.key or b"") + (record.value or b"")
        assert {json.loads(r.value)["user_id"] for r in lists} == \
            {pseudonym(u.encode()).decode() for u in USERS}

        # forgetting by the real id deletes the pseudonymous state
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_USERS"],
                            [(USERS[0].encode(), None)]))
        worker.wait_metric("streamrec_users_forgotten_total", 1)
        assert worker._get(f"/users/{USERS[0]}")[0] == 404
        assert worker._get(f"/users/{USERS[1]}")[0] == 200
        time.sleep(3)
        for table in STATE_TABLES:
            if table in ("item-state", "item-stats"):   # keyed by item
                continue
            latest = asyncio.run(latest_by_key(kafka.bootstrap, changelog_topic(app_id, table)))
            left = latest.get(pseudonym(USERS[0].encode()), None)
            if table == "user-state":   # a marker, the request's time only, for the guard
                assert left is not None
                assert is_marker(StateCodec(UserState).decode(left))
                assert USERS[0].encode() not in left
            else:
                assert left is None, table
    finally:
        worker.stop()
