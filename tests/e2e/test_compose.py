"""The Docker stack without a Docker engine: compose file, image recipe, entrypoint, conf rendering.

No Docker engine runs on our machines, so the containers themselves are never started. What
can be checked here is: docker-compose accepts the file; it says what the local stack says
(Kafka transaction settings, loopback-only ports); everything it points at exists; and the
entrypoint's roles work, by running them as plain processes: the Flink roles render their conf
with ``ops.cluster render`` and start JobManager + TaskManager in the foreground, and the compose
file's own client command submits the round-trip job to them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.kafka import LocalKafka
from ops.paths import ROOT, venv_python
from ops.proc import free_port

pytestmark = pytest.mark.e2e

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "conf" / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "conf" / "docker" / "entrypoint.sh"
KAFKA_PROPERTIES = ROOT / "conf" / "kafka" / "server.properties"
CORE_SERVICES = {"kafka", "jobmanager", "taskmanager", "provider-sim"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services in compose file"
    return data


def _kafka_env_to_property(name: str) -> str:
    """apache/kafka's mapping: KAFKA_FOO_BAR -> foo.bar, '__' -> '_', '___' -> '-'."""
    body = name.removeprefix("KAFKA_").lower()
    return (
        body.replace("___", "\0").replace("__", "\1").replace("_", ".").replace("\0", "-").replace("\1", "_")
    )


def _properties(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


# --- (a) docker-compose accepts the file ------------------------------------------------


def test_docker_compose_config_accepts_the_file():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose 1.29)")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}{result.stdout}"
    assert "WARNING" not in result.stderr, result.stderr


# --- (b) what the file says -------------------------------------------------------------


def test_services_exist(compose):
    missing = CORE_SERVICES - set(compose["services"])
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_kafka_has_the_transaction_settings_of_the_local_broker(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    env = _env(kafka)
    props = {_kafka_env_to_property(k): v for k, v in env.items() if k.startswith("KAFKA_")}
    # exactly-once KafkaSink on a single node needs these; same numbers as server.properties
    required = {
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.max.timeout.ms": "3600000",
    }
    for key, value in required.items():
        assert props.get(key) == value, f"kafka service: {key}={props.get(key)!r}, want {value}"
    local = _properties(KAFKA_PROPERTIES)
    drift = {
        key: (value, local[key])
        for key, value in props.items()
        if key in local and "${" not in local[key] and "listener" not in key and key != "log.dirs"
        if value != local[key]
    }
    assert not drift, f"compose Kafka settings differ from conf/kafka/server.properties: {drift}"
    assert props["process.roles"] == "broker,controller", "the compose broker is not KRaft single-node"


def _published(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports") or []]


def test_jobmanager_publishes_8081_on_loopback_only(compose):
    assert "127.0.0.1:8081:8081" in _published(compose["services"]["jobmanager"])
    for name, service in compose["services"].items():
        for port in _published(service):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_referenced_images_and_build_files_exist(compose):
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image or service.get("build"), f"{name} has neither image nor build"
        if image and not service.get("build"):
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), (
                f"{name}: image {image!r} is not pinned to a tag"
            )
        if service.get("build"):
            build = service["build"]
            context = ROOT / build["context"]
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / build["dockerfile"]
            assert dockerfile.resolve() == DOCKERFILE.resolve() and dockerfile.is_file(), dockerfile


def test_dockerfile_is_pinned_non_root_and_copies_what_exists():
    text = DOCKERFILE.read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
    assert "openjdk-17-jre-headless" in text
    assert "scripts/setup" in text, "the image must install through scripts/setup (one install path)"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), f"runtime user is {users[-1:]}"
    entry = re.search(r'^ENTRYPOINT \["bash", "/app/(.+?)"\]', text, flags=re.M)
    assert entry and (ROOT / entry.group(1)) == ENTRYPOINT
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".cache", ".run", ".git"} <= ignored, "machine-local folders would enter the image"


def test_client_profile_submits_the_roundtrip_job(compose):
    client = compose["services"]["client"]
    assert client.get("profiles") == ["client"]
    script = " ".join(client["command"])
    assert client["command"][0] == "client"
    assert "flink run -m jobmanager:8081 -py jobs/roundtrip.py" in script
    assert "--set kafka.bootstrap=kafka:9092" in script
    volumes = {
        name: {str(v).split(":")[0] for v in compose["services"][name].get("volumes") or []}
        for name in ("jobmanager", "taskmanager")
    }
    assert "flink-state" in volumes["jobmanager"] & volumes["taskmanager"], (
        "JobManager and TaskManager must share the checkpoint volume"
    )


# --- (c) the entrypoint ---------------------------------------------------------------


def test_entrypoint_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def _entrypoint_env(tmp_path: Path, work: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLINK_")}
    env.update(
        NOTIFY_ROOT=str(ROOT),
        NOTIFY_PYTHON=str(venv_python()),
        FLINK_WORK_DIR=str(tmp_path / work),
        FLINK_STATE_DIR=str(tmp_path / "state"),
        **extra,
    )
    return env


@pytest.mark.parametrize(
    ("role", "script"), [("jobmanager", "jobmanager.sh"), ("taskmanager", "taskmanager.sh")]
)
def test_entrypoint_flink_roles_render_conf_then_start_in_foreground(tmp_path, role, script):
    env = _entrypoint_env(tmp_path, role, NOTIFY_ENTRYPOINT_DRY_RUN="1")
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), role, "--set", "taskmanager.numberOfTaskSlots=3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"pyflink/bin/{script} start-foreground"), result.stdout
    conf = yaml.safe_load((tmp_path / role / "conf" / "config.yaml").read_text())
    assert conf["jobmanager.rpc.address"] == "jobmanager"
    assert conf["taskmanager.bind-host"] == "0.0.0.0"
    assert conf["taskmanager.numberOfTaskSlots"] == 3
    assert "taskmanager.host" not in conf, "a TaskManager must advertise its own container address"


def test_entrypoint_provider_sim_and_client_roles(tmp_path):
    env = _entrypoint_env(tmp_path, "x", NOTIFY_ENTRYPOINT_DRY_RUN="1", PROVIDER_SIM_LEDGER=":memory:")
    sim = subprocess.run(
        ["bash", str(ENTRYPOINT), "provider-sim", "--seed", "3"], env=env, capture_output=True, text=True
    )
    assert sim.returncode == 0, sim.stderr
    assert "-m ops.provider_sim --host 0.0.0.0 --port 8090" in sim.stdout
    assert sim.stdout.strip().endswith("--seed 3")
    client = subprocess.run(
        ["bash", str(ENTRYPOINT), "client", "flink", "list"], env=env, capture_output=True, text=True
    )
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == "flink list"
    assert (tmp_path / "x" / "conf" / "config.yaml").is_file(), "client role did not render a conf"
    nothing = subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True)
    assert nothing.returncode == 1 and "no role given" in nothing.stderr


# --- (d) ops.cluster render --------------------------------------------------------------


def test_cluster_render_writes_a_container_conf(tmp_path):
    conf_dir = tmp_path / "flink" / "conf"
    result = subprocess.run(
        [
            str(venv_python()),
            "-m",
            "ops.cluster",
            "render",
            "--conf-dir",
            str(conf_dir),
            "--rpc-host",
            "jobmanager",
            "--bind-host",
            "0.0.0.0",
            "--rest-port",
            "18081",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'scripts'}:{ROOT}"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    conf = yaml.safe_load((conf_dir / "config.yaml").read_text())
    assert conf["jobmanager.rpc.address"] == "jobmanager"
    assert conf["rest.address"] == "jobmanager"
    assert conf["jobmanager.bind-host"] == conf["taskmanager.bind-host"] == "0.0.0.0"
    assert conf["rest.bind-address"] == "0.0.0.0"
    assert conf["rest.port"] == 18081
    assert conf["jobmanager.rpc.port"] == 6123
    assert conf["python.executable"] == conf["python.client.executable"] == str(venv_python())
    assert Path(conf["python.executable"]).exists()
    assert conf["execution.checkpointing.dir"] == (tmp_path / "state" / "checkpoints").as_uri()
    assert conf["execution.checkpointing.savepoint-dir"] == (tmp_path / "state" / "savepoints").as_uri()
    assert "--add-opens" in conf["env.java.opts.all"]
    assert (conf_dir / "log4j-console.properties").is_file(), "start-foreground logs with this file"
    assert (tmp_path / "state" / "checkpoints").is_dir()


def test_cluster_render_rejects_a_malformed_set(tmp_path):
    result = subprocess.run(
        [str(venv_python()), "-m", "ops.cluster", "render", "--conf-dir", str(tmp_path), "--set", "oops"],
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'scripts'}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "KEY=VALUE" in result.stderr and "Traceback" not in result.stderr


# --- the roles for real, as processes instead of containers ------------------------------


def _overview(rest_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/overview", timeout=3) as resp:
        return dict(json.loads(resp.read()))


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_entrypoint_roles_run_the_compose_client_command(tmp_path, compose, kafka: LocalKafka):
    """JobManager + TaskManager via the entrypoint, then the compose client script submits to them."""
    rest, rpc = free_port(), free_port()
    ports = {"FLINK_JOBMANAGER_HOST": "127.0.0.1", "FLINK_REST_PORT": str(rest), "FLINK_RPC_PORT": str(rpc)}
    local = {**ports, "FLINK_BIND_HOST": "127.0.0.1"}  # loopback here; 0.0.0.0 in containers
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for role, args in (
            ("jobmanager", []),
            ("taskmanager", ["--set", "taskmanager.memory.process.size=1536m"]),
        ):
            log = (tmp_path / f"{role}.out").open("wb")
            procs.append(
                subprocess.Popen(
                    ["bash", str(ENTRYPOINT), role, *args],
                    env=_entrypoint_env(tmp_path, role, **local),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            log.close()
        deadline = time.monotonic() + 120
        while True:
            dead = [p.args[2] for p in procs if p.poll() is not None]
            assert not dead, f"{dead} exited early: {(tmp_path / f'{dead[0]}.out').read_text()[-2000:]}"
            try:
                if _overview(rest).get("taskmanagers", 0) >= 1:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the TaskManager did not register within 120 s"
            time.sleep(0.5)

        command = compose["services"]["client"]["command"]
        script = (
            command[-1]
            .replace("$$", "$")
            .replace("kafka:9092", kafka.bootstrap)
            .replace("jobmanager:8081", f"127.0.0.1:{rest}")
        )
        client = subprocess.run(
            ["bash", str(ENTRYPOINT), *command[:-1], script],
            env=_entrypoint_env(tmp_path, "client", EVENTS="200", **ports),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        output = client.stdout + client.stderr
        assert client.returncode == 0, output[-3000:]
        assert "client: produced 200 events" in output, output[-3000:]
        found = re.search(r"client: (\d+) records in notifications\.roundtrip\.docker-", output)
        assert found and int(found.group(1)) > 0, output[-3000:]
        assert _overview(rest)["jobs-finished"] == 1
    finally:
        for proc in reversed(procs):
            _stop_group(proc)
