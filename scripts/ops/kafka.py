"""A single-node KRaft Kafka broker on loopback, started from the cached Maven jars.

Usage (``scripts/kafka``)::

    scripts/kafka start [--port 9092]   # format storage once, start, wait until it answers
    scripts/kafka status
    scripts/kafka topics [--create NAME ...]
    scripts/kafka stop                  # stops only the broker this script started (pid file)

Tests use :class:`LocalKafka` directly with free ports and a temporary folder.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ops.paths import CONF_DIR, JAR_DIR, RUN_DIR, kafka_classpath
from ops.proc import (
    StackError,
    free_port,
    pid_alive,
    read_pid,
    require_free_port,
    stop_pid,
    tail,
    wait_for,
)

MARKER = "kafka.Kafka"
"""Substring of the broker's command line; we only ever stop a pid whose cmdline has it."""


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError("Java 17 is required but `java` is not on PATH; install OpenJDK 17.")
    return java


def _check_jars() -> None:
    if not any((JAR_DIR / "kafka").glob("kafka_2.13-*.jar")):
        raise StackError(f"The Kafka jars are missing from {JAR_DIR / 'kafka'}; run scripts/setup.")


@dataclass
class LocalKafka:
    """One broker+controller JVM whose data, logs and pid file live in ``home``."""

    home: Path
    port: int = 9092
    controller_port: int = 0
    heap: str = "512m"
    start_timeout_s: float = 60.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        """Return the ``host:port`` clients connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        """Return the pid file of the broker started from ``home``."""
        return self.home / "kafka.pid"

    @property
    def log_file(self) -> Path:
        """Return the broker's log file."""
        return self.home / "kafka.log"

    def pid(self) -> int | None:
        """Return the broker pid when it is running."""
        pid = read_pid(self.pid_file)
        return pid if pid is not None and pid_alive(pid) else None

    def _render_config(self) -> Path:
        template = (CONF_DIR / "kafka" / "server.properties").read_text()
        text = (
            template.replace("${PORT}", str(self.port))
            .replace("${CONTROLLER_PORT}", str(self.controller_port))
            .replace("${DATA_DIR}", str(self.home / "data"))
        )
        path = self.home / "server.properties"
        path.write_text(text)
        return path

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        return [
            _java(),
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={CONF_DIR / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.home}",
            "-cp",
            kafka_classpath(),
            main,
            *args,
        ]

    def _format(self, config: Path) -> None:
        meta = self.home / "data" / "meta.properties"
        if meta.exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        result = subprocess.run(
            # --cluster-id=ID, not "-t ID": a random id may start with "-" and read as an option
            self._java_cmd(
                "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config)
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"Formatting Kafka storage in {self.home / 'data'} failed: "
                f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}"
            )

    def start(self) -> LocalKafka:
        """Format storage once, start the broker and wait until it answers metadata requests."""
        _check_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        running = self.pid()
        if running is not None:
            saved = self.home / "port"
            if saved.exists():
                self.port = int(saved.read_text())
            return self
        if self.controller_port == 0:
            self.controller_port = free_port()
        require_free_port(self.port, "Kafka")
        require_free_port(self.controller_port, "the Kafka controller")
        config = self._render_config()
        self._format(config)
        log = self.log_file.open("ab")
        self._proc = subprocess.Popen(
            self._java_cmd("kafka.Kafka", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pid_file.write_text(str(self._proc.pid))
        (self.home / "port").write_text(str(self.port))
        proc = self._proc
        try:
            wait_for(
                self.ready,
                self.start_timeout_s,
                f"Kafka on {self.bootstrap}",
                alive=lambda: proc.poll() is None,
                log_hint=lambda: f" Last log lines ({self.log_file}):\n{tail(self.log_file)}",
            )
        except StackError:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        """Return True when the broker answers a metadata request."""
        import socket

        from kafka import KafkaAdminClient

        try:  # fail fast while nothing listens (the admin client would retry for seconds)
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()

    def stop(self) -> bool:
        """Stop the broker started from ``home`` (by its pid file); return True if one ran."""
        pid = self.pid()
        stopped = stop_pid(pid, MARKER, timeout_s=30) if pid is not None else False
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def create_topics(
        self, names: list[str], partitions: int = 2, config: dict[str, str] | None = None
    ) -> None:
        """Create topics (no error when they exist)."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            for name in names:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(
                        [
                            NewTopic(
                                name,
                                num_partitions=partitions,
                                replication_factor=1,
                                topic_configs=config or {},
                            )
                        ]
                    )
        finally:
            admin.close()

    def topics(self) -> list[str]:
        """Return the topic names (internal ones excluded)."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            return sorted(t for t in admin.list_topics() if not t.startswith("__"))
        finally:
            admin.close()


def default_home() -> Path:
    """Return the runtime folder of the broker that ``scripts/kafka`` manages."""
    return RUN_DIR / "kafka"


def _cli_kafka(port: int | None) -> LocalKafka:
    home = default_home()
    saved = home / "port"
    if port is None:
        port = int(saved.read_text()) if saved.exists() else int(os.environ.get("NOTIFY_KAFKA_PORT", "9092"))
    return LocalKafka(home=home, port=port)


def main(argv: list[str] | None = None) -> int:
    """Run the ``scripts/kafka`` command line."""
    parser = argparse.ArgumentParser(prog="scripts/kafka", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start the local broker (idempotent)")
    start.add_argument("--port", type=int, default=None, help="client port (default 9092)")
    sub.add_parser("stop", help="stop the broker this script started")
    sub.add_parser("status", help="say whether the broker runs and where")
    topics = sub.add_parser("topics", help="list topics, or create some")
    topics.add_argument("--create", nargs="*", default=[], metavar="NAME")
    topics.add_argument("--partitions", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        kafka = _cli_kafka(getattr(args, "port", None))
        if args.cmd == "start":
            was_running = kafka.pid() is not None
            kafka.start()
            state = "already running" if was_running else "started"
            print(f"kafka {state}: bootstrap {kafka.bootstrap} (pid {kafka.pid()}, data in {kafka.home})")
        elif args.cmd == "stop":
            print("kafka stopped" if kafka.stop() else "kafka was not running (nothing of ours to stop)")
        elif args.cmd == "status":
            pid = kafka.pid()
            if pid is None:
                print("kafka: not running")
                return 3
            print(f"kafka: running, bootstrap {kafka.bootstrap}, pid {pid}, ready={_safe_ready(kafka)}")
        elif args.cmd == "topics":
            if kafka.pid() is None:
                raise StackError("Kafka is not running; start it with scripts/kafka start.")
            if args.create:
                kafka.create_topics(args.create, partitions=args.partitions)
            for name in kafka.topics():
                print(name)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _safe_ready(kafka: LocalKafka) -> bool:
    try:
        return kafka.ready()
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
