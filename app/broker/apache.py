"""A local Apache Kafka broker (KRaft, single node) for the test suite and the benchmarks.

The jars come from Maven Central (``kafka-pom.xml`` beside this file), resolved once into
``~/.cache/streamrec/kafka-<version>/libs`` (override with STREAMREC_TEST_CACHE). Each user
(a test session, a benchmark run) formats a fresh log directory, starts the broker on free
ports with the installed JDK (17+), waits until it answers, and stops it at the end. Needs
Maven once and a JDK; nothing here assumes a broker that it did not start.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from app.broker.embedded import die_with_parent, stop_process

HERE = Path(__file__).parent
POM = HERE / "kafka-pom.xml"


def kafka_version() -> str:
    """The Apache Kafka version pinned in kafka-pom.xml."""
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    if match is None:
        raise ValueError("kafka.version missing from kafka-pom.xml")
    return match.group(1)


def cache_root() -> Path:
    return Path(os.environ.get("STREAMREC_TEST_CACHE", Path.home() / ".cache" / "streamrec"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resolve_jars() -> Path:
    """The folder of broker jars, resolved with Maven on first use."""
    libs = cache_root() / f"kafka-{kafka_version()}" / "libs"
    done = libs / ".complete"
    if done.exists():
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed once to fetch the Kafka test broker jars")
    libs.mkdir(parents=True, exist_ok=True)
    print(f"resolving Apache Kafka {kafka_version()} jars into {libs} ...", file=sys.stderr)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}"],
        check=True,
    )
    done.touch()
    return libs


_LOG4J = """status = error
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding, never starting
    with "-" (kafka-storage would read it as an option: 1 start in 64 failed so, as Kafka's
    own Uuid.randomUuid() also avoids)."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not found.startswith("-"):
            return found


class KafkaBroker:
    """One KRaft broker+controller process in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.controller_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
        if not java:
            raise RuntimeError("a JDK (17+) is needed to run the Apache Kafka test broker")
        return str(java)

    def start(self, timeout: float = 90.0) -> None:
        libs = resolve_jars()
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = self.workdir / "server.properties"
        props.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "log.flush.interval.messages=1000000",
            ])
            + "\n"
        )
        log4j = self.workdir / "log4j2.properties"
        log4j.write_text(_LOG4J)
        classpath = f"{libs}/*"
        cluster = new_cluster_id()
        java = self._java()
        jvm = ["-Xms256m", "-Xmx768m", f"-Dlog4j2.configurationFile={log4j}"]
        for attempt in (1, 2, 3):
            formatted = subprocess.run(
                [java, *jvm, "-cp", classpath, "kafka.tools.StorageTool", "format",
                 "-t", cluster, "-c", str(props), "--ignore-formatted"],
                capture_output=True, text=True, check=False,
            )
            if formatted.returncode == 0:
                break
            print(f"formatting the Kafka log dir failed (attempt {attempt}): "
                  f"{(formatted.stdout + formatted.stderr)[-2000:]}", file=sys.stderr)
            time.sleep(1.0)
        else:
            raise RuntimeError("could not format the Kafka log directory; see stderr above")
        logfile = (self.workdir / "broker.log").open("wb")
        self._process = subprocess.Popen(
            [java, *jvm, "-cp", classpath, "kafka.Kafka", str(props)],
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        logfile.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Kafka exited: {(self.workdir / 'broker.log').read_text()}")
            if "Kafka Server started" in (self.workdir / "broker.log").read_text(errors="replace"):
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("Apache Kafka did not start in time")

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process, grace=30)

    def kill(self) -> None:
        """SIGKILL, then wait for the exit: a broker gone with no goodbye (tests)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)
