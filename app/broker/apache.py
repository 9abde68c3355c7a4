"""A local Apache Kafka broker (KRaft, single node) for the test suite and the benchmarks.

The jars come from Maven Central (``kafka-pom.xml`` beside this file), resolved once into
``~/.cache/streamrec/kafka-<version>/libs`` (override with STREAMREC_TEST_CACHE). Each user
(a test session, a benchmark run) formats a fresh log directory, starts the broker on free
ports with the installed JDK (17+), waits until it answers, and stops it at the end. Needs
Maven once and a JDK; nothing here assumes a broker that it did not start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A certificate authority made for one run and a broker certificate it signed (for
    127.0.0.1 and localhost), made with the JDK's keytool: the CA as PEM for clients, the
    broker's key and chain as a PKCS#12 keystore."""

    ca_pem: Path
    keystore: Path
    password: str


def make_tls(folder: Path, keytool: str | None = None) -> TlsFiles:
    """A fresh CA and broker certificate in ``folder`` (valid two days)."""
    tool = keytool or shutil.which("keytool") or str(Path(_java()).with_name("keytool"))
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(16)
    ca, broker = folder / "ca.p12", folder / "broker.p12"
    ca_pem, csr, signed = folder / "ca.pem", folder / "broker.csr", folder / "broker.pem"
    store = ["-storetype", "PKCS12", "-storepass", password, "-keypass", password]
    steps = [
        ["-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048", "-validity", "2",
         "-dname", "CN=StreamRec test CA", "-ext", "bc:c", "-keystore", str(ca), *store],
        ["-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca), "-file", str(ca_pem),
         *store],
        ["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
         "-validity", "2", "-dname", "CN=localhost", "-keystore", str(broker), *store],
        ["-certreq", "-alias", "broker", "-keystore", str(broker), "-file", str(csr), *store],
        ["-gencert", "-alias", "ca", "-keystore", str(ca), "-infile", str(csr), "-outfile",
         str(signed), "-rfc", "-validity", "2", "-ext", "SAN=ip:127.0.0.1,dns:localhost",
         *store],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem), "-keystore",
         str(broker), *store],
        ["-importcert", "-alias", "broker", "-file", str(signed), "-keystore", str(broker),
         *store],
    ]
    for step in steps:
        done = subprocess.run([tool, *step], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"keytool {step[0]} failed: {done.stdout}{done.stderr}")
    return TlsFiles(ca_pem, broker, password)


@dataclass(frozen=True, slots=True)
class SaslSsl:
    """A SASL_SSL listener beside the plaintext one: TLS with ``tls``'s certificate, SCRAM
    (SHA-256 and SHA-512) for ``username``, whose credentials are written when the log
    directory is formatted."""

    tls: TlsFiles
    username: str
    password: str


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    if not java:
        raise RuntimeError("a JDK (17+) is needed to run the Apache Kafka test broker")
    return str(java)


class KafkaBroker:
    """One KRaft broker+controller process in ``workdir``; with ``sasl_ssl``, a second
    listener that takes SASL/SCRAM over TLS (``secure_bootstrap``)."""

    def __init__(self, workdir: Path, sasl_ssl: SaslSsl | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.controller_port = free_port()
        self.sasl_ssl = sasl_ssl
        self.secure_port = free_port() if sasl_ssl is not None else 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    def _listeners(self) -> list[str]:
        plain = f"PLAINTEXT://127.0.0.1:{self.port}"
        controller = f"CONTROLLER://127.0.0.1:{self.controller_port}"
        if self.sasl_ssl is None:
            return [f"listeners={plain},{controller}", f"advertised.listeners={plain}",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"]
        secure = f"SASL_SSL://127.0.0.1:{self.secure_port}"
        tls = self.sasl_ssl.tls
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return [
            f"listeners={plain},{secure},{controller}",
            f"advertised.listeners={plain},{secure}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,"
            "CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={tls.keystore}",
            f"ssl.keystore.password={tls.password}",
            f"ssl.key.password={tls.password}",
            "ssl.client.auth=none",
        ]

    def _scram_users(self) -> list[str]:
        if self.sasl_ssl is None:
            return []
        user = f"name={self.sasl_ssl.username},password={self.sasl_ssl.password}"
        return ["--add-scram", f"SCRAM-SHA-256=[{user}]",
                "--add-scram", f"SCRAM-SHA-512=[{user}]"]

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
                *self._listeners(),
                "controller.listener.names=CONTROLLER",
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
        java = _java()
        jvm = ["-Xms256m", "-Xmx768m", f"-Dlog4j2.configurationFile={log4j}"]
        for attempt in (1, 2, 3):
            if (data / "meta.properties").exists():
                break   # started again after a stop or kill: its log and cluster id stay
            formatted = subprocess.run(
                [java, *jvm, "-cp", classpath, "kafka.tools.StorageTool", "format",
                 "-t", cluster, "-c", str(props), "--ignore-formatted",
                 *self._scram_users()],
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

    def topic_bytes(self) -> dict[str, int]:
        """Bytes in each topic's log segments on disk (every partition): record batches as
        the broker stores them, after the producers' compression, with Kafka's batch and
        record headers. Growth between two calls is what was written meanwhile (the
        cleaner never touches the active segment, and a segment holds 1 GiB)."""
        return topic_log_bytes(self.workdir / "data")

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process, grace=30)

    def kill(self) -> None:
        """SIGKILL, then wait for the exit: a broker gone with no goodbye (tests)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)


_PARTITION_DIR = re.compile(r"^(?P<topic>.+)-(?P<partition>[0-9]+)$")


def topic_log_bytes(data: Path) -> dict[str, int]:
    """:meth:`KafkaBroker.topic_bytes` of the log directory ``data``."""
    sizes: dict[str, int] = {}
    for folder in data.iterdir() if data.is_dir() else ():
        named = _PARTITION_DIR.match(folder.name)
        if named is None or not folder.is_dir():
            continue
        size = 0
        for segment in folder.glob("*.log"):
            with contextlib.suppress(FileNotFoundError):   # deleted by retention meanwhile
                size += segment.stat().st_size
        sizes[named["topic"]] = sizes.get(named["topic"], 0) + size
    return sizes


async def start_unless_given(broker: str | None, workdir: Path, say: Callable[[str], None]
                             ) -> tuple[str, KafkaBroker | None]:
    """``broker`` when one is given; else an Apache Kafka started from the Maven jars in
    ``workdir``/kafka (the caller stops it): the bootstrap address, and the broker started
    if any."""
    if broker is not None:
        return broker, None
    say("starting Apache Kafka (KRaft) from the Maven Central jars")
    local = KafkaBroker(workdir / "kafka")
    await asyncio.to_thread(local.start)
    return local.bootstrap, local
