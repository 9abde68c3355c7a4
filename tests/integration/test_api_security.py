"""The HTTP API with STREAMREC_API_TOKEN on two workers: every API route wants the bearer
token, on the worker asked and on the owner a request is forwarded to; probes and metrics
stay open; Faust's own routes (raw per-user state, the cluster layout) are not served."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec

from app.broker.apache import KafkaBroker, free_port
from app.contract.records import View
from tests.integration.test_recommendations import CATALOGUE, TS, _items
from tests.support.kafka_io import produce
from tests.support.worker import WorkerProcess, isolated_env

TOKEN = "t0ken-for-the-test"
USERS = [f"user-{n}" for n in range(12)]


def _get(worker: WorkerProcess, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(worker.base_url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _owner_served_all(worker: WorkerProcess, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(_get(worker, f"/users/{u}", TOKEN) == 200 for u in USERS):
            return
        time.sleep(0.5)
    raise AssertionError("not every user is known with the token")


def test_the_api_wants_the_token_on_every_worker_and_faust_routes_are_off(
        kafka: KafkaBroker, tmp_path: Path) -> None:
    env = isolated_env(kafka.bootstrap, tmp_path / "a", partitions=4)
    env["STREAMREC_API_TOKEN"] = TOKEN
    env_b = {**env, "STREAMREC_DATA_DIR": str(tmp_path / "b"),
             "STREAMREC_WEB_PORT": str(free_port())}
    a = WorkerProcess(env, tmp_path / "a.log").start()
    b = WorkerProcess(env_b, tmp_path / "b.log").start()
    try:
        a.wait_ready()
        b.wait_ready()
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_ITEMS"], _items()))
        a.wait_metric("streamrec_catalogue_items", len(CATALOGUE))
        events = [(u.encode(), msgspec.json.encode(View(v=1, event_id=f"{u}-0", user_id=u,
                                                        ts=TS, item_id="alien")))
                  for u in USERS]
        asyncio.run(produce(kafka.bootstrap, env["STREAMREC_TOPIC_EVENTS"], events))
        for worker in (a, b):
            _owner_served_all(worker)   # half of them forwarded to the other worker
            for user in USERS:
                for path in (f"/users/{user}", f"/users/{user}/recommendations"):
                    assert _get(worker, path) == 401, path
                    assert _get(worker, path, "wrong") == 401, path
                    assert _get(worker, path, TOKEN) == 200, path
            assert _get(worker, "/items/alien") == 401
            assert _get(worker, "/items/alien", TOKEN) == 200
            assert _get(worker, "/model") == 401
            for open_path in ("/metrics", "/health", "/ready"):
                assert _get(worker, open_path) == 200, open_path
            for faust_path in (f"/table/user-state/{USERS[0]}/", "/router/", "/graph/"):
                assert _get(worker, faust_path) == 404, faust_path
                assert _get(worker, faust_path, TOKEN) == 404, faust_path
    finally:
        a.stop()
        b.stop()
    for worker in (a, b):
        assert TOKEN not in worker.log.read_text(errors="replace")



def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_idle_and_half_sent_connections_are_closed(kafka: KafkaBroker, tmp_path: Path) -> None:
    env = isolated_env(kafka.bootstrap, tmp_path / "w")
    env["STREAMREC_WEB_IDLE_TIMEOUT_SECONDS"] = "2"
    worker = WorkerProcess(env, tmp_path / "w.log").start()
    held: list[socket.socket] = []
    try:
        worker.wait_ready()
        port = int(env["STREAMREC_WEB_PORT"])
        for n in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if n % 2:   # half a request: a request line and one header, never finished
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        assert _get(worker, "/ready") == 200   # 300 held connections do not block it
        started = time.monotonic()
        closed = [_closed_by_server(sock) for sock in held]
        took = time.monotonic() - started
        print(f"{sum(closed)} of {len(held)} held connections closed by the worker "
              f"within {took:.1f} s")
        assert all(closed)
        assert took < 15
        too_many = "".join(f"X-{n}: {n}\r\n" for n in range(100))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: x\r\n{too_many}\r\n".encode())
            answer = sock.recv(1024)
            assert answer.split(b" ")[1:2] == [b"400"], answer[:200]
    finally:
        for sock in held:
            sock.close()
        worker.stop()
