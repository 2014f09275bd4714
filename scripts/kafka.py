#!/usr/bin/env python3
"""A real single-node Apache Kafka broker (KRaft, no ZooKeeper) for tests and local runs.

    python3 scripts/kafka.py fetch            # cache the jars from Maven Central
    python3 scripts/kafka.py start DIR PORT [--no-auto-create]   # broker on 127.0.0.1:PORT, data in DIR
    python3 scripts/kafka.py stop DIR

Standard library only, so it runs before the project's virtualenv exists.
`start` returns once the broker answers a metadata request; stopping and starting
again on the same DIR keeps every topic and message (the broker-outage tests rely
on it). On failure it exits non-zero with the tail of DIR/kafka.log.
`--no-auto-create` turns off the broker's topic auto-creation (dev.sh's broker,
like a production one: KGB creates its topics with its own partitions and limit);
the tests' broker keeps it, for the tests that publish to a topic nobody made.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # real Claude Code requests grow past 1 MB
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
JVM_OPTIONS = ("-Xms128m", "-Xmx512m", "-XX:+UseG1GC")


class KafkaScriptError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says why."""


def kafka_version() -> str:
    """The pom is the one place the version is written; the cache is keyed on it."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    for dep in ET.parse(POM).getroot().iterfind("m:dependencies/m:dependency", ns):
        if dep.findtext("m:artifactId", namespaces=ns) == "kafka_2.13":
            return dep.findtext("m:version", namespaces=ns) or ""
    raise KafkaScriptError(f"{POM} has no kafka_2.13 dependency")


def lib_dir() -> Path:
    """Under the home directory so every clone and CI run on a machine shares it."""
    base = Path(os.environ.get("KGB_CACHE_DIR", Path.home() / ".cache" / "kgb"))
    return base / f"kafka-{kafka_version()}" / "lib"


def fetch() -> Path:
    """Copy the broker's jars out of Maven into the cache, once; `.complete` marks success."""
    lib = lib_dir()
    if (lib / ".complete").exists():
        return lib
    if shutil.which("mvn") is None:
        raise KafkaScriptError("mvn not found: install Maven (apt-get install -y maven)")
    lib.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="lib.", dir=lib.parent))
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={staging}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise KafkaScriptError(f"mvn failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    (staging / ".complete").touch()
    _publish(staging, lib)
    return lib


def _publish(staging: Path, lib: Path) -> None:
    """Rename into place; a concurrent fetch that won the race leaves an equal copy."""
    try:
        staging.rename(lib)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (lib / ".complete").exists():
            raise


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+), where the local ends of
    outgoing connections cannot take it while a stopped service waits to restart."""
    while True:
        port = random.randrange(20000, 32768)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


AUTO_CREATE = re.compile(r"^auto\.create\.topics\.enable=.*$", re.MULTILINE)


def server_properties(data: Path, port: int, controller_port: int, auto_create: bool = True, extra: str = "") -> str:
    """One process is broker and controller; every replication setting fits one node.
    `extra` lines come last, so they win over the ones above (bench/broker_bench.py tries its variants so)."""
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
auto.create.topics.enable={str(auto_create).lower()}
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
message.max.bytes={MAX_MESSAGE_BYTES}
replica.fetch.max.bytes={MAX_MESSAGE_BYTES}
group.initial.rebalance.delay.ms=0
{extra}"""


LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""


def configure(run_dir: Path, port: int, auto_create: bool = True, extra: str = "") -> Path:
    """Written on the first start only, so a restart reuses the same controller port;
    auto-creation is set as this start asks, whatever an earlier one wrote."""
    props = run_dir / "server.properties"
    if props.exists():
        text = props.read_text()
        if f"PLAINTEXT://127.0.0.1:{port}," not in text:
            raise KafkaScriptError(f"{run_dir} was set up for another port; use a new DIR")
        props.write_text(AUTO_CREATE.sub(f"auto.create.topics.enable={str(auto_create).lower()}", text))
        return props
    props.write_text(server_properties(run_dir / "data", port, free_port(), auto_create, extra))
    (run_dir / "log4j.properties").write_text(LOG4J_PROPERTIES)
    return props


def java_cmd(lib: Path, run_dir: Path, *args: str, jvm: tuple[str, ...] = JVM_OPTIONS) -> list[str]:
    java = Path(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    return [
        str(java),
        *jvm,
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{run_dir / 'log4j.properties'}",
        "-cp",
        f"{lib}/*",
        *args,
    ]


def new_cluster_id() -> str:
    """Kafka's Uuid text form; one starting with '-' would read as an option to StorageTool."""
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
        pass
    return cluster_id


def format_storage(lib: Path, run_dir: Path, props: Path) -> None:
    """KRaft needs formatted storage; skipped when it already is, which keeps the data."""
    if (run_dir / "data" / "meta.properties").exists():
        return
    cluster_id = new_cluster_id()
    cmd = java_cmd(lib, run_dir, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise KafkaScriptError(f"formatting storage failed:\n{done.stdout}{done.stderr}")


def log_tail(run_dir: Path, lines: int = 40) -> str:
    log = run_dir / "kafka.log"
    text = log.read_text(errors="replace") if log.exists() else "(no kafka.log)"
    return "\n".join(text.splitlines()[-lines:])


def running_pid(run_dir: Path) -> int | None:
    """The pid in DIR/kafka.pid if that broker is alive.

    Read from /proc rather than probed with a signal: in containers whose init
    does not reap orphans a dead broker lingers as a zombie, which still takes signals.
    """
    try:
        pid = int((run_dir / "kafka.pid").read_text())
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError):
        return None
    state = stat.rsplit(")", 1)[1].split()[0]
    return pid if state != "Z" and b"kafka.Kafka" in cmdline else None


def launch(lib: Path, run_dir: Path, props: Path, jvm: tuple[str, ...] = JVM_OPTIONS) -> subprocess.Popen[bytes]:
    """Its own session, so it outlives this script and Ctrl-C in a terminal does not reach it."""
    with open(run_dir / "kafka.log", "ab") as log:
        proc = subprocess.Popen(
            java_cmd(lib, run_dir, "kafka.Kafka", str(props), jvm=jvm),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (run_dir / "kafka.pid").write_text(str(proc.pid))
    return proc


def metadata_answers(port: int) -> bool:
    """A Metadata v0 request listing at least one broker: the broker serves clients."""
    request = struct.pack(">hhih", 3, 0, 1, 3) + b"kgb" + struct.pack(">i", 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            _size, correlation_id, brokers = struct.unpack(">iii", _recv_exactly(sock, 12))
    except OSError:
        return False
    return correlation_id == 1 and brokers >= 1


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def wait_ready(proc: subprocess.Popen[bytes], run_dir: Path, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not metadata_answers(port):
        if proc.poll() is not None:
            raise KafkaScriptError(f"kafka exited with {proc.returncode}; {run_dir}/kafka.log:\n{log_tail(run_dir)}")
        if time.monotonic() > deadline:
            stop(run_dir)
            raise KafkaScriptError(f"kafka not ready after {READY_TIMEOUT_S:.0f}s; kafka.log:\n{log_tail(run_dir)}")
        time.sleep(0.2)


def start(run_dir: Path, port: int, auto_create: bool = True, jvm: tuple[str, ...] = JVM_OPTIONS, extra: str = "") -> None:
    """`jvm` and `extra` (server.properties lines, on a first start) are for bench/broker_bench.py's variants."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if pid := running_pid(run_dir):
        raise KafkaScriptError(f"kafka already running from {run_dir} (pid {pid})")
    if port_in_use(port):
        raise KafkaScriptError(f"127.0.0.1:{port} is already in use")
    lib = fetch()
    props = configure(run_dir, port, auto_create, extra)
    format_storage(lib, run_dir, props)
    wait_ready(launch(lib, run_dir, props, jvm), run_dir, port)
    print(f"kafka ready on 127.0.0.1:{port} (data and kafka.log in {run_dir})")


def stop(run_dir: Path) -> None:
    """A clean shutdown flushes the logs, so the next start finds every message."""
    pid = running_pid(run_dir)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while running_pid(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    if running_pid(run_dir):
        os.kill(pid, signal.SIGKILL)
    (run_dir / "kafka.pid").unlink(missing_ok=True)


def kill(run_dir: Path) -> None:
    """SIGKILL, as a crash would: nothing flushed, the next start recovers from the logs."""
    pid = running_pid(run_dir)
    if pid is None:
        return
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while running_pid(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    (run_dir / "kafka.pid").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    usage = "usage: kafka.py fetch | start DIR PORT [--no-auto-create] | stop DIR | kill DIR"
    try:
        match argv:
            case ["fetch"]:
                print(fetch())
            case ["start", run_dir, port]:
                start(Path(run_dir).resolve(), int(port))
            case ["start", run_dir, port, "--no-auto-create"]:
                start(Path(run_dir).resolve(), int(port), auto_create=False)
            case ["stop", run_dir]:
                stop(Path(run_dir).resolve())
            case ["kill", run_dir]:
                kill(Path(run_dir).resolve())
            case _:
                print(usage, file=sys.stderr)
                return 2
    except KafkaScriptError as exc:
        print(f"kafka.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
