"""Real Kafka and PostgreSQL for the tests, and the helpers behind the fixtures in conftest.py.

Where the services come from, in order:
1. `KGB_TEST_KAFKA_BOOTSTRAP` / `KGB_TEST_DATABASE_URL`: services someone already runs.
   They are not ours, so `stop()`/`start()` on them raise.
2. Docker, when `docker info` succeeds (or `KGB_TEST_SERVICES=docker`): Redpanda and
   PostgreSQL through testcontainers (`pip install -e '.[docker]'`).
3. Otherwise (or `KGB_TEST_SERVICES=scripts`): `scripts/kafka.py` and `scripts/postgres.sh`
   start a real Apache Kafka broker and a throwaway PostgreSQL cluster on free ports
   in temporary directories.

A service that cannot start raises `ServiceError` with the tail of its log: the run
fails, it never skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumers.dewey.consumer import migrations as dewey_migrations
from consumers.dewey.settings import DeweySettings
from consumers.metrics.settings import MetricsSettings
from consumers.sql import load_migrations, migrate
from consumers.winni.settings import WinniSettings
from scripts.kafka import free_port

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # as scripts/kafka.py configures the broker
REDPANDA_IMAGE = "docker.redpanda.com/redpandadata/redpanda:v24.2.7"
POSTGRES_IMAGE = "postgres:16"


class ServiceError(RuntimeError):
    """A test service could not be started, stopped or used; the message carries its log."""


class KafkaBroker(Protocol):
    """What tests get from the `kafka` fixture."""

    bootstrap: str

    def stop(self) -> None:
        """Take the broker away (an outage); its data stays for `start()`."""

    def kill(self) -> None:
        """Take it away as a crash does (SIGKILL: nothing flushed); `start()` recovers its data."""

    def start(self) -> None:
        """Bring it back on the same address with the same data; returns once it serves."""

    def ensure_running(self) -> None:
        """Undo a `stop()` a failed test left behind, so later tests still have a broker."""


class PostgresServer(Protocol):
    """What tests get from the `postgres` fixture."""

    dsn: str  # the `winni` database
    admin_dsn: str  # a database to run CREATE/DROP DATABASE from

    def restart(self) -> None:
        """Stop the server the way an operator's restart does (fast shutdown: every session is
        ended, mid-query or not) and start it again on the same address; returns once it serves."""


def run_script(*cmd: str) -> None:
    """Run one of scripts/; its stderr already holds the log tail when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ServiceError(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stderr}{done.stdout}")


def remove_after_exit(stop: list[str], run_dir: Path) -> subprocess.Popen[bytes]:
    """Stop the service and delete its directory once this process exits, even if killed
    before teardown; a normal teardown kills this watchdog first (`dismiss`)."""
    cmd = [str(SCRIPTS / "after-exit.sh"), str(os.getpid()), "sh", "-c", '"$@"; rm -rf "$0"', str(run_dir), *stop]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def dismiss(watchdog: subprocess.Popen[bytes]) -> None:
    watchdog.kill()
    watchdog.wait()


def with_database(dsn: str, name: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


# --- Services started by scripts/ -------------------------------------------------


class ScriptKafka:
    """Apache Kafka (KRaft) from scripts/kafka.py, data in a temporary directory."""

    def __init__(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="kgb-kafka-"))
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.running = False
        self.watchdog = remove_after_exit([sys.executable, str(SCRIPTS / "kafka.py"), "stop", str(self.run_dir)], self.run_dir)

    def open(self) -> None:
        self.start()

    def start(self) -> None:
        run_script(sys.executable, str(SCRIPTS / "kafka.py"), "start", str(self.run_dir), str(self.port))
        self.running = True

    def stop(self) -> None:
        run_script(sys.executable, str(SCRIPTS / "kafka.py"), "stop", str(self.run_dir))
        self.running = False

    def kill(self) -> None:
        run_script(sys.executable, str(SCRIPTS / "kafka.py"), "kill", str(self.run_dir))
        self.running = False

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def close(self) -> None:
        dismiss(self.watchdog)
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)


class ScriptPostgres:
    """A throwaway cluster from scripts/postgres.sh.

    Its directory comes straight from mkdtemp (under /tmp), not pytest's tmp_path:
    the server runs as the `postgres` user, who cannot enter pytest's 0700 root-owned tree.
    """

    def __init__(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="kgb-pg-"))
        port = free_port()
        self.admin_dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.dsn = with_database(self.admin_dsn, "winni")
        self.port = port
        self.watchdog = remove_after_exit([str(SCRIPTS / "postgres.sh"), "stop", str(self.run_dir)], self.run_dir)

    def open(self) -> None:
        run_script(str(SCRIPTS / "postgres.sh"), "start", str(self.run_dir), str(self.port))

    def restart(self) -> None:
        run_script(str(SCRIPTS / "postgres.sh"), "stop", str(self.run_dir))
        self.open()

    def close(self) -> None:
        dismiss(self.watchdog)
        run_script(str(SCRIPTS / "postgres.sh"), "stop", str(self.run_dir))
        shutil.rmtree(self.run_dir, ignore_errors=True)


# --- Services someone else runs ---------------------------------------------------


class ExternalKafka:
    """The broker named by KGB_TEST_KAFKA_BOOTSTRAP; not ours to stop."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def stop(self) -> None:
        raise ServiceError("KGB_TEST_KAFKA_BOOTSTRAP is set: that broker is not ours to stop; unset it for outage tests")

    def start(self) -> None:
        raise ServiceError("KGB_TEST_KAFKA_BOOTSTRAP is set: that broker is not ours to start; unset it for outage tests")

    def kill(self) -> None:
        raise ServiceError("KGB_TEST_KAFKA_BOOTSTRAP is set: that broker is not ours to kill; unset it for outage tests")

    def ensure_running(self) -> None:
        """Nothing to undo: stop() never worked on it."""


class ExternalPostgres:
    """The server named by KGB_TEST_DATABASE_URL; tests create their databases beside it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.admin_dsn = with_database(dsn, "postgres")

    def restart(self) -> None:
        raise ServiceError("KGB_TEST_DATABASE_URL is set: that server is not ours to restart; unset it for restart tests")


# --- Services in Docker -----------------------------------------------------------


def docker_usable() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def container_host(container) -> str:  # type: ignore[no-untyped-def]
    """testcontainers says `localhost`; our tests address services as 127.0.0.1."""
    host = container.get_container_host_ip()
    return "127.0.0.1" if host == "localhost" else host


def testcontainers_module(name: str):  # type: ignore[no-untyped-def]
    try:
        return __import__(f"testcontainers.community.{name}", fromlist=["_"])
    except ImportError as exc:
        raise ServiceError(f"Docker is usable but testcontainers is not installed: pip install -e '.[docker]' ({exc})") from exc


class RedpandaKafka:
    """Redpanda in Docker. An outage here is a paused container, not a stopped one:
    a restarted container would get a new host port, and the address must not change.
    Clients see a broker that stops answering rather than one that refuses connections."""

    def __init__(self) -> None:
        self.container = testcontainers_module("kafka").RedpandaContainer(REDPANDA_IMAGE)
        self.bootstrap = ""
        self.paused = False

    def open(self) -> None:
        self.container.start(timeout=120)
        result = self.container.exec(["rpk", "cluster", "config", "set", "kafka_batch_max_bytes", str(MAX_MESSAGE_BYTES)])
        if result.exit_code != 0:
            raise ServiceError(f"raising Redpanda's batch size failed: {result.output!r}")
        port = self.container.get_exposed_port(self.container.redpanda_port)
        self.bootstrap = f"{container_host(self.container)}:{port}"

    def stop(self) -> None:
        self.container.get_wrapped_container().pause()
        self.paused = True

    def kill(self) -> None:
        """A paused container is as gone as a killed one to its clients, and keeps its data the same way."""
        self.stop()

    def start(self) -> None:
        self.container.get_wrapped_container().unpause()
        self.paused = False

    def ensure_running(self) -> None:
        if self.paused:
            self.start()

    def close(self) -> None:
        self.container.stop()


class DockerPostgres:
    """PostgreSQL in Docker, on a host port chosen here: a restarted container keeps its address."""

    def __init__(self) -> None:
        module = testcontainers_module("postgres")
        self.port = free_port()
        self.container = module.PostgresContainer(
            POSTGRES_IMAGE, username="postgres", password="postgres", dbname="winni", driver=None
        )
        self.container.with_bind_ports(5432, self.port)
        self.dsn = self.admin_dsn = ""

    def open(self) -> None:
        self.container.start()
        self.dsn = f"postgresql://postgres:postgres@{container_host(self.container)}:{self.port}/winni"
        self.admin_dsn = with_database(self.dsn, "postgres")

    def restart(self) -> None:
        self.container.get_wrapped_container().restart(timeout=30)
        for _ in range(300):
            if self.container.exec(["pg_isready", "-h", "127.0.0.1", "-U", "postgres"]).exit_code == 0:
                return
            time.sleep(0.1)
        raise ServiceError("PostgreSQL in Docker did not come back within 30 s of a restart")

    def close(self) -> None:
        self.container.stop()


# --- Choosing and owning them -----------------------------------------------------


def use_docker() -> bool:
    mode = os.environ.get("KGB_TEST_SERVICES", "auto")
    if mode not in ("auto", "docker", "scripts"):
        raise ServiceError(f"KGB_TEST_SERVICES must be auto, docker or scripts, got {mode!r}")
    return mode == "docker" or (mode == "auto" and docker_usable())


@contextlib.contextmanager
def kafka_broker() -> Iterator[KafkaBroker]:
    """A broker for the whole session, stopped and deleted at the end."""
    if bootstrap := os.environ.get("KGB_TEST_KAFKA_BOOTSTRAP"):
        yield ExternalKafka(bootstrap)
        return
    broker: RedpandaKafka | ScriptKafka = RedpandaKafka() if use_docker() else ScriptKafka()
    try:
        broker.open()
        yield broker
    finally:
        broker.close()


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server with a `winni` database, for the whole session."""
    if dsn := os.environ.get("KGB_TEST_DATABASE_URL"):
        yield ExternalPostgres(dsn)
        return
    server: DockerPostgres | ScriptPostgres = DockerPostgres() if use_docker() else ScriptPostgres()
    try:
        server.open()
        yield server
    finally:
        server.close()


# --- Per-test databases and topics ------------------------------------------------


async def create_database(admin_dsn: str, template: str | None = None) -> str:
    """A new empty database (or a copy of `template`, e.g. one already migrated); returns its DSN."""
    name = f"test_{uuid.uuid4().hex}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{clause}')  # identifiers cannot be bound parameters
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def migrated_database(admin_dsn: str) -> str:
    """A new database with every consumer's migrations applied in its default schema (winni's ``kgb``,
    ``kgb_metrics``, ``kgb_dewey``): the template each test's database is copied from, so a test
    starts from the tables its consumer would make without waiting for them to be made."""
    dsn = await create_database(admin_dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, load_migrations("consumers.winni"), WinniSettings.db_schema)
        await migrate(conn, load_migrations("consumers.metrics"), MetricsSettings.db_schema)
        await migrate(conn, dewey_migrations(), DeweySettings.db_schema)
    finally:
        await conn.close()
    return dsn


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


async def drop_database(admin_dsn: str, dsn: str) -> None:
    """FORCE: a test that leaked a connection must not make teardown hang or fail."""
    name = database_name(dsn)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_topic(bootstrap: str, partitions: int = 3, max_message_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """A new topic of its own, so a test never reads another test's events."""
    name = f"kgb-test-{uuid.uuid4().hex[:16]}"
    topic = NewTopic(name, partitions, 1, topic_configs={"max.message.bytes": str(max_message_bytes)})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([topic])
    finally:
        await admin.close()
    errors = [error for error in response.topic_errors if error[1]]  # (name, code[, message])
    if errors:
        raise ServiceError(f"creating topic {name} failed: {errors}")
    return name
