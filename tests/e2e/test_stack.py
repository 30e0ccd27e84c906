"""The local stack's own behaviour: bad environments give one clear sentence."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ops.cluster import LocalFlinkCluster
from ops.kafka import LocalKafka
from ops.paths import ROOT
from ops.proc import StackError, free_port, pid_alive

pytestmark = pytest.mark.e2e


@pytest.fixture
def held_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def test_kafka_refuses_a_taken_port(tmp_path, held_port):
    with pytest.raises(StackError, match=f"Port {held_port} .* already in use, so Kafka cannot start"):
        LocalKafka(home=tmp_path, port=held_port).start()
    assert not (tmp_path / "kafka.pid").exists()


def test_kafka_cli_reports_a_taken_port_in_one_line(held_port):
    result = subprocess.run(
        [str(ROOT / "scripts" / "kafka"), "start", "--port", str(held_port)],
        capture_output=True,
        text=True,
        env={**os.environ, "NOTIFY_RUN_DIR": str(Path(os.environ.get("TMPDIR", "/tmp")) / "notify-cli-test")},
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert f"Port {held_port}" in result.stderr and "Traceback" not in result.stderr


def test_cluster_refuses_a_taken_rest_port(tmp_path, held_port):
    with pytest.raises(StackError, match="Flink REST API / UI cannot start"):
        LocalFlinkCluster(home=tmp_path, rest_port=held_port).start()


def test_broker_not_up_in_time_is_reported_and_cleaned_up(tmp_path):
    broker = LocalKafka(home=tmp_path, port=free_port(), start_timeout_s=0.3)
    with pytest.raises(StackError, match=r"Kafka on 127\.0\.0\.1:\d+ was not up within"):
        broker.start()
    pid_file = tmp_path / "kafka.pid"
    assert not pid_file.exists()
    assert broker._proc is None or not pid_alive(broker._proc.pid)


def _setup(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(ROOT / "scripts" / "setup"), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_setup_names_a_jar_that_fails_its_checksum(tmp_path):
    jars = tmp_path / "jars" / "flink"
    jars.mkdir(parents=True)
    (jars / "flink-sql-connector-kafka-5.0.0-2.2.jar").write_bytes(b"not the real jar")
    sums = tmp_path / "sums"
    real = (ROOT / "conf" / "jars" / "checksums.sha256").read_text().splitlines()
    sums.write_text("\n".join(line for line in real if "flink-sql-connector-kafka" in line) + "\n")
    env = {**os.environ, "NOTIFY_JAR_DIR": str(tmp_path / "jars"), "NOTIFY_JAR_SUMS": str(sums)}
    result = _setup("--verify-jars", env=env)
    assert result.returncode == 1
    assert "checksum mismatch for flink/flink-sql-connector-kafka-5.0.0-2.2.jar" in result.stderr


def test_setup_without_java_says_so_in_one_sentence(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "head", "cat"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    result = _setup(env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "setup: error: Java 17 is required but 'java' is not on PATH; "
        "install OpenJDK 17 (Debian: apt-get install openjdk-17-jdk-headless)."
    )
