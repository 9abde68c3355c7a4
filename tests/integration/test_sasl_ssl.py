"""The whole pipeline over SASL_SSL: an Apache Kafka broker with a SASL/SCRAM listener over
TLS, its certificate signed by a CA this test makes (keytool); `streamrec topics`, a worker
and plain clients all connect with STREAMREC_SECURITY_PROTOCOL=SASL_SSL and the CA file.
A wrong password, or a client that does not trust the CA, ends with one line naming what
to fix, non-zero and fast."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from app.broker.apache import KafkaBroker, SaslSsl, make_tls
from app.broker.reading import read_to_end
from app.contract.records import ItemUpsert, Recommendation, View
from app.settings import Settings
from app.tools import send_records
from tests.support.worker import WorkerProcess, isolated_env

TS = 1_700_000_000_000
USER = "streamrec-app"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    folder = tmp_path_factory.mktemp("sasl-ssl")
    broker = KafkaBroker(folder / "kafka",
                         SaslSsl(make_tls(folder / "tls"), USER, secrets.token_urlsafe(12)))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _env(broker: KafkaBroker, data: Path, password: str | None = None,
         trust: bool = True) -> dict[str, str]:
    assert broker.sasl_ssl is not None
    env = isolated_env(broker.secure_bootstrap, data)
    env.update({
        "STREAMREC_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMREC_SASL_MECHANISM": "SCRAM-SHA-512",
        "STREAMREC_SASL_USERNAME": USER,
        "STREAMREC_SASL_PASSWORD": broker.sasl_ssl.password if password is None else password,
        "STREAMREC_CONNECT_TIMEOUT_SECONDS": "60",
    })
    if trust:
        env["STREAMREC_SSL_CAFILE"] = str(broker.sasl_ssl.tls.ca_pem)
    return env


def _settings(env: dict[str, str]) -> Settings:
    return Settings.model_validate({k.removeprefix("STREAMREC_").lower(): v
                                    for k, v in env.items() if k.startswith("STREAMREC_")})


def _streamrec(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_the_pipeline_runs_over_sasl_ssl(secured: KafkaBroker, tmp_path: Path) -> None:
    env = _env(secured, tmp_path / "data")
    code, output, _ = _streamrec(["topics"], env)
    assert code == 0, output
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(within=120)
        settings = _settings(env)
        items = [(item.encode(), msgspec.json.encode(ItemUpsert(
            v=1, event_id=f"c-{item}", item_id=item, ts=TS, title=title)))
            for item, title in (("alien", "Alien"), ("aliens", "Aliens"), ("cars", "Cars"))]
        asyncio.run(send_records(settings, settings.topic_items, items))
        worker.wait_metric("streamrec_catalogue_items", len(items), within=90)
        views = [(b"ripley", msgspec.json.encode(View(v=1, event_id=f"e{n}", user_id="ripley",
                                                        ts=TS + n, item_id=item)))
                 for n, item in enumerate(("alien", "cars"))]
        asyncio.run(send_records(settings, settings.topic_events, views))
        worker.wait_metric("streamrec_recommendations_total", 1, within=60)

        lists: list[Recommendation] = []

        def keep(key: bytes | None, value: bytes | None) -> None:
            if value:
                lists.append(msgspec.json.decode(value, type=Recommendation))

        asyncio.run(read_to_end(settings, settings.topic_recommendations, keep, within=60))
        assert lists
        assert lists[-1].user_id == "ripley"
        assert {i.item_id for i in lists[-1].items} <= {"aliens"}   # nothing seen, nothing else
    finally:
        worker.stop()
    text = worker.log.read_text(errors="replace")
    assert "Traceback" not in text
    assert broker_password_absent(text, secured)


def broker_password_absent(text: str, broker: KafkaBroker) -> bool:
    assert broker.sasl_ssl is not None
    return broker.sasl_ssl.password not in text


@pytest.mark.parametrize("command", [["topics"], ["worker"]])
def test_a_wrong_password_is_one_line_fast(secured: KafkaBroker, tmp_path: Path,
                                            command: list[str]) -> None:
    code, output, took = _streamrec(command, _env(secured, tmp_path / "data", "wrong-one"))
    lines = [line for line in output.splitlines() if line.startswith("streamrec: ")]
    assert code == 1, output[-2000:]
    assert "Traceback" not in output
    assert len(lines) == 1, output[-2000:]
    assert "refused the credentials" in lines[0]
    assert "STREAMREC_SASL_PASSWORD" in lines[0]
    assert "wrong-one" not in output
    assert took < 20, took


@pytest.mark.parametrize("command", [["topics"], ["worker"]])
def test_an_untrusted_certificate_is_one_line_fast(secured: KafkaBroker, tmp_path: Path,
                                                   command: list[str]) -> None:
    code, output, took = _streamrec(command, _env(secured, tmp_path / "data", trust=False))
    lines = [line for line in output.splitlines() if line.startswith("streamrec: ")]
    assert code == 1, output[-2000:]
    assert "Traceback" not in output
    assert len(lines) == 1, output[-2000:]
    assert "does not trust" in lines[0]
    assert "STREAMREC_SSL_CAFILE" in lines[0]
    assert took < 20, took


def test_the_plaintext_port_is_not_tls(secured: KafkaBroker, tmp_path: Path) -> None:
    env = _env(secured, tmp_path / "data")
    env["STREAMREC_BROKER_URL"] = secured.bootstrap
    code, output, took = _streamrec(["topics"], env)
    lines = [line for line in output.splitlines() if line.startswith("streamrec: ")]
    assert code == 1, output[-2000:]
    assert len(lines) == 1, output[-2000:]
    assert "does not speak TLS" in lines[0]
    assert "STREAMREC_SECURITY_PROTOCOL" in lines[0]
    assert took < 20, took



