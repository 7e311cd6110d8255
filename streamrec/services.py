"""Local Kafka and Redis for development, tests and CI: real servers, started from here.

Kafka is the official Apache Kafka broker, its jars collected from Maven Central by
``streamrec/kafka/pom.xml`` and run as a single-node KRaft broker. Redis is the
``redis-server`` binary (Debian's package). Each service keeps its data, logs and pid
file under ``<state_dir>/<service>/``; ``services.env`` records their addresses so
``Settings`` finds them.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import string
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from core.errors import ServiceError

KAFKA_FILES = resources.files("streamrec") / "kafka"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_REDIS_PORT = 6379


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens there, else any free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            # as servers bind: a port held only by TIME_WAIT connections is free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise ServiceError("no free TCP port")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _require(binary: str, hint: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise ServiceError(f"'{binary}' is not on PATH: {hint}")
    return path


@dataclass
class LocalService:
    """A server process started in the background, tracked by a pid and a port file."""

    name: str
    state_dir: Path

    @property
    def home(self) -> Path:
        return self.state_dir / self.name

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @property
    def port_file(self) -> Path:
        return self.home / "port"

    def running_port(self) -> int | None:
        """The port of this service when its process is alive and listening."""
        try:
            pid = int(self.pid_file.read_text())
            port = int(self.port_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return port if _pid_alive(pid) and _port_open(port) else None

    def _spawn(self, argv: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "stdout.log", "ab")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **(env or {})},
        )
        self.pid_file.write_text(str(proc.pid))
        self.port_file.write_text(str(port))
        return proc

    def _wait(self, proc: subprocess.Popen, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.home / "stdout.log").read_text(errors="replace")[-2000:]
                raise ServiceError(f"{self.name} exited with code {proc.returncode} while starting:\n{tail}")
            if ready():
                return
            time.sleep(0.2)
        self.stop()
        raise ServiceError(f"{self.name} did not answer within {timeout_s:.0f} s; see {self.home}")

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop the process (SIGTERM, then SIGKILL); True if one was running."""
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return False
        self.pid_file.unlink(missing_ok=True)
        if not _pid_alive(pid):
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            try:  # reap it when it is our own child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        return True


class LocalRedis(LocalService):
    def __init__(self, state_dir: Path, name: str = "redis"):
        super().__init__(name, state_dir)

    def start(self, port: int | None = None, timeout_s: float = 20.0, extra_args: tuple[str, ...] = ()) -> str:
        running = self.running_port()
        if running:
            return f"redis://127.0.0.1:{running}/0"
        binary = _require("redis-server", "install it with 'apt-get install redis-server'")
        port = port or free_port(DEFAULT_REDIS_PORT)
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data.resolve()),
                "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
                *extra_args]
        proc = self._spawn(argv, port)
        self._wait(proc, lambda: _port_open(port), timeout_s)
        return f"redis://127.0.0.1:{port}/0"

    def version(self) -> str:
        out = subprocess.run([_require("redis-server", ""), "--version"], capture_output=True, text=True)
        return out.stdout.strip()


class LocalRedisCluster:
    """A Redis Cluster of ``shards`` primaries (no replicas) on this host, for tests and trials.

    Each node is a ``LocalRedis`` under ``<state_dir>/redis-cluster/``; ``redis-cli
    --cluster create`` spreads the 16384 hash slots over them.
    """

    def __init__(self, state_dir: Path, shards: int = 3):
        self.nodes = [LocalRedis(state_dir / "redis-cluster", name=f"node-{n}") for n in range(shards)]

    def start(self, timeout_s: float = 30.0) -> str:
        """Start the nodes, form the cluster, and return its ``redis+cluster://`` URL."""
        ports = [node.running_port() for node in self.nodes]
        if not all(ports):
            self.stop()
            for node in self.nodes:
                for stale in ("nodes.conf", "appendonlydir"):  # a cluster is formed anew
                    path = node.home / "data" / stale
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            ports = []
            for node in self.nodes:
                port = free_port()
                node.start(port, timeout_s, ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                             "--cluster-node-timeout", "5000"))
                ports.append(port)
            cli = _require("redis-cli", "install it with 'apt-get install redis-server'")
            created = subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                 "--cluster-yes"], capture_output=True, text=True, timeout=timeout_s)
            if created.returncode != 0:
                self.stop()
                raise ServiceError(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}{created.stderr}")
        self._wait_ok(ports, timeout_s)
        return f"redis+cluster://127.0.0.1:{ports[0]}"

    @staticmethod
    def _wait_ok(ports: list[int], timeout_s: float) -> None:
        """Until every node says the cluster is up (the news spreads by gossip, node by node)."""
        cli = _require("redis-cli", "")
        deadline = time.monotonic() + timeout_s
        for port in ports:
            while "cluster_state:ok" not in subprocess.run(
                    [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True).stdout:
                if time.monotonic() > deadline:
                    raise ServiceError(f"Redis Cluster node {port}: no cluster_state:ok after {timeout_s:.0f} s")
                time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _kafka_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class LocalKafka(LocalService):
    """Apache Kafka in KRaft mode, run from the jars that Maven collects.

    ``libs_dir`` (default ``<state_dir>/kafka/libs``) holds the jars; several brokers, each
    with a state folder of its own, can share one.
    """

    def __init__(self, state_dir: Path, libs_dir: Path | None = None):
        super().__init__("kafka", state_dir)
        self.libs = libs_dir or self.home / "libs"

    def install(self) -> Path:
        """Collect the broker's runtime classpath from Maven Central (once)."""
        if self.libs.is_dir() and any(self.libs.glob("kafka_2.13-*.jar")):
            return self.libs
        _require("java", "install a Java 17+ runtime (Debian: 'apt-get install openjdk-17-jre-headless')")
        mvn = _require("mvn", "install Maven (Debian: 'apt-get install maven')")
        self.libs.mkdir(parents=True, exist_ok=True)
        with resources.as_file(KAFKA_FILES / "pom.xml") as pom:
            result = subprocess.run(
                [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                 "-DincludeScope=runtime", f"-DoutputDirectory={self.libs.resolve()}"],
                capture_output=True, text=True,
            )
        if result.returncode != 0:
            raise ServiceError(f"mvn could not collect the Kafka jars:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        return self.libs

    def version(self) -> str:
        jar = next(self.libs.glob("kafka_2.13-*.jar"), None)
        return jar.stem.removeprefix("kafka_2.13-") if jar else "not installed"

    def _java(self, main_class: str, *args: str) -> list[str]:
        return ["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC",
                f"-Dkafka.logs.dir={self.home.resolve()}",
                f"-Dlog4j2.configurationFile={(self.home / 'log4j2.properties').resolve()}",
                "-cp", f"{self.libs.resolve()}/*", main_class, *args]

    def start(self, port: int | None = None, partitions: int = 3, timeout_s: float = 90.0) -> str:
        """Start the broker (or find it running); returns its bootstrap address.

        A broker stopped earlier restarts on its old ports with its data (topics, offsets)
        when those ports are free and ``port`` does not ask for another one.
        """
        running = self.running_port()
        if running:
            return f"127.0.0.1:{running}"
        self.install()
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        data = (self.home / "data").resolve()
        (self.home / "log4j2.properties").write_text((KAFKA_FILES / "log4j2.properties").read_text())
        ports = self._previous_ports(port, data)
        if ports is None:
            ports = port or free_port(DEFAULT_KAFKA_PORT), free_port()
            config.write_text(string.Template((KAFKA_FILES / "server.properties").read_text()).substitute(
                broker_port=ports[0], controller_port=ports[1], data_dir=data, partitions=partitions
            ))
            (self.home / "ports").write_text(f"{ports[0]} {ports[1]}")
            shutil.rmtree(data, ignore_errors=True)
            fmt = subprocess.run(
                # "=": a cluster id may start with "-"
                self._java("kafka.tools.StorageTool", "format", f"--cluster-id={_kafka_cluster_id()}",
                           f"--config={config}"),
                capture_output=True, text=True,
            )
            if fmt.returncode != 0:
                raise ServiceError(f"kafka storage format failed:\n{fmt.stdout[-2000:]}{fmt.stderr[-2000:]}")
        proc = self._spawn(self._java("kafka.Kafka", str(config)), ports[0])
        self._wait(proc, lambda: _kafka_answers(f"127.0.0.1:{ports[0]}"), timeout_s)
        return f"127.0.0.1:{ports[0]}"

    def _previous_ports(self, port: int | None, data: Path) -> tuple[int, int] | None:
        """The (broker, controller) ports of an earlier start whose data can be reused."""
        try:
            broker, controller = map(int, (self.home / "ports").read_text().split())
        except (FileNotFoundError, ValueError):
            return None
        reusable = (
            (data / "meta.properties").exists()
            and port in (None, broker)
            and free_port(broker) == broker
            and free_port(controller) == controller
        )
        return (broker, controller) if reusable else None


@contextlib.contextmanager
def _quiet_kafka_client():
    """While probing a broker that is starting, kafka-python's connection errors are expected:
    its loggers say nothing below CRITICAL (a normal start prints no ERROR lines)."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _kafka_answers(bootstrap: str) -> bool:
    """True when the broker serves metadata (a TCP accept alone comes too early). No client
    is made before the port accepts connections."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, _, port = bootstrap.rpartition(":")
    if host in ("127.0.0.1", "localhost") and not _port_open(int(port)):
        return False
    with _quiet_kafka_client():
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        except (KafkaError, OSError, ValueError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
