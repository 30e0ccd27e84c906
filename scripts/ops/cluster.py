"""A standalone Flink session cluster from the pip-installed distribution (``pyflink/bin``).

Usage (``scripts/cluster``)::

    scripts/cluster start [--rest-port 8081] [--slots 8] [--prometheus]
                                                           # JobManager + one TaskManager
    scripts/cluster status
    scripts/cluster stop                                   # stops only the daemons it started
    scripts/cluster render --conf-dir DIR [--rpc-host jobmanager] [--bind-host 0.0.0.0]
                                                           # only write a conf dir (containers)

The cluster runs with the project's ``conf/flink/config.yaml``, rendered into a runtime
folder with absolute paths (virtualenv python, checkpoint/savepoint dirs, logs, pid files).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ops.paths import CONF_DIR, ROOT, RUN_DIR, venv_python
from ops.proc import (
    StackError,
    free_port,
    port_in_use,
    read_pid,
    require_free_port,
    stop_pid,
    tail,
    wait_for,
)

DAEMONS = {"jobmanager": "standalonesession", "taskmanager": "taskexecutor"}
MARKER = "org.apache.flink.runtime"

PROMETHEUS_PORTS = "9249-9260"
"""Ports the Prometheus reporter may bind, one per daemon (JobManager, TaskManager)."""

PROMETHEUS_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"

PROMETHEUS_STARTED = re.compile(r"Started PrometheusReporter HTTP server on port (\d+)")


def prometheus_options(ports: str = PROMETHEUS_PORTS) -> dict[str, Any]:
    """Return the Flink options that switch on the Prometheus reporter (``/metrics`` on ``ports``).

    The same keys are documented, commented out, in ``conf/flink/config.yaml``.
    """
    return {
        "metrics.reporter.prom.factory.class": PROMETHEUS_FACTORY,
        "metrics.reporter.prom.port": ports,
    }


def flink_home() -> Path:
    """Return the Flink distribution inside the installed pyflink package."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def plugins_dir() -> Path:
    """Return the daemons' plugins folder (FLINK_PLUGINS_DIR): the distribution's ``plugins/``.

    The pip-installed distribution ships the metric reporters there, each in its own
    sub-folder (e.g. ``metrics-prometheus/flink-metrics-prometheus-<version>.jar``).
    """
    return flink_home() / "plugins"


def prometheus_jar() -> Path | None:
    """Return the Prometheus reporter plugin jar, or None when the distribution lacks it."""
    jars = sorted((plugins_dir() / "metrics-prometheus").glob("flink-metrics-prometheus-*.jar"))
    return jars[-1] if jars else None


def _require_java() -> None:
    if shutil.which("java") is None:
        raise StackError("Java 17 is required but `java` is not on PATH; install OpenJDK 17.")


@dataclass
class LocalFlinkCluster:
    """One JobManager and one TaskManager whose conf, logs and pids live in ``home``."""

    home: Path
    rest_port: int = 8081
    rpc_port: int = 0
    slots: int = 8
    start_timeout_s: float = 90.0
    extra: dict[str, Any] | None = None
    prometheus: bool = False
    """Switch on the Prometheus reporter (:func:`prometheus_options`) in the rendered config."""

    @property
    def conf_dir(self) -> Path:
        """Return the rendered FLINK_CONF_DIR."""
        return self.home / "conf"

    @property
    def log_dir(self) -> Path:
        """Return FLINK_LOG_DIR."""
        return self.home / "log"

    @property
    def rest_url(self) -> str:
        """Return the REST API / Web UI base URL."""
        return f"http://127.0.0.1:{self.rest_port}"

    def env(self) -> dict[str, str]:
        """Return the environment for Flink's scripts and the ``flink`` CLI."""
        env = dict(os.environ)
        env["FLINK_CONF_DIR"] = str(self.conf_dir)
        env["FLINK_LOG_DIR"] = str(self.log_dir)
        env["FLINK_LIB_DIR"] = str(self.lib_dir())
        env["FLINK_PLUGINS_DIR"] = str(plugins_dir())
        env["PATH"] = f"{venv_python().parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def lib_dir(self) -> Path:
        """Return the cluster's lib folder: the distribution's jars plus flink-python.

        Thread mode loads pemja's native library once per JVM. With flink-python only in the
        job's classloader, the second job on a TaskManager fails with
        ``NoSuchFieldException: loadedLibraryNames``; on the parent classpath it is loaded once.
        """
        lib = self.home / "lib"
        lib.mkdir(parents=True, exist_ok=True)
        home = flink_home()
        for jar in [*(home / "lib").glob("*.jar"), *(home / "opt").glob("flink-python-*.jar")]:
            link = lib / jar.name
            if not link.exists():
                link.symlink_to(jar)
        return lib

    def config(self) -> dict[str, Any]:
        """Return the effective cluster configuration (project file plus filled-in values)."""
        conf: dict[str, Any] = yaml.safe_load((CONF_DIR / "flink" / "config.yaml").read_text())
        python = str(venv_python())
        conf.update(
            {
                "rest.port": self.rest_port,
                "jobmanager.rpc.port": self.rpc_port,
                "taskmanager.numberOfTaskSlots": self.slots,
                "execution.checkpointing.dir": (self.home / "checkpoints").as_uri(),
                "execution.checkpointing.savepoint-dir": (self.home / "savepoints").as_uri(),
                "python.executable": python,
                "python.client.executable": python,
                # thread mode (embedded CPython) must see the venv's site-packages + project
                "python.pythonpath": f"{_site_packages()}:{ROOT}",
                "env.pid.dir": str(self.home / "run"),
                "env.log.dir": str(self.log_dir),
            }
        )
        # The project's packages, for workers that do not use the editable install.
        conf["env.java.opts.all"] = _java_opts(flink_home())
        if self.prometheus:
            conf.update(prometheus_options())
        conf.update(self.extra or {})
        return conf

    def prometheus_ports(self) -> dict[str, int]:
        """Return ``{daemon: port}`` of the running Prometheus endpoints, read from the daemons' logs.

        Each daemon takes the first free port of ``metrics.reporter.prom.port``; empty when the
        reporter is off (or has not started yet).
        """
        found: dict[str, int] = {}
        for role, daemon in DAEMONS.items():
            log = self._log(daemon)
            if log.exists():
                ports = PROMETHEUS_STARTED.findall(log.read_text(errors="replace"))
                if ports:
                    found[role] = int(ports[-1])
        return found

    def _render(self) -> None:
        if self.rpc_port == 0:
            self.rpc_port = 6123 if not port_in_use(6123) else free_port()
        for sub in ("conf", "log", "run", "checkpoints", "savepoints"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        dist_conf = flink_home() / "conf"
        for name in (
            "log4j.properties",
            "log4j-console.properties",
            "log4j-cli.properties",
            "log4j-session.properties",
            "logback.xml",
        ):
            if (dist_conf / name).exists():
                shutil.copy(dist_conf / name, self.conf_dir / name)
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(self.config(), sort_keys=True))
        (self.conf_dir / "masters").write_text(f"127.0.0.1:{self.rest_port}\n")
        (self.conf_dir / "workers").write_text("127.0.0.1\n")

    def pids(self) -> dict[str, int]:
        """Return the pids of our running daemons, by role."""
        found = {}
        for role, daemon in DAEMONS.items():
            for pid_file in (self.home / "run").glob(f"flink-*-{daemon}.pid"):
                pid = read_pid(pid_file)
                if pid is not None:
                    found[role] = pid
        return found

    def start(self) -> LocalFlinkCluster:
        """Start JobManager and TaskManager and wait until the REST API lists a TaskManager."""
        _require_java()
        if self.pids():
            self.rest_port = saved_rest_port(self.home, self.rest_port)
            self.wait_ready()
            return self
        require_free_port(self.rest_port, "the Flink REST API / UI")
        self._render()
        (self.home / "rest-port").write_text(str(self.rest_port))
        try:
            for script in ("jobmanager.sh", "taskmanager.sh"):
                self._daemon(script, "start")
        except StackError:
            self.stop()
            raise
        try:
            self.wait_ready()
        except StackError:
            self.stop()
            raise
        return self

    def _daemon(self, script: str, action: str) -> None:
        """Run one of Flink's daemon scripts (``jobmanager.sh start``) with this cluster's env."""
        result = subprocess.run(
            ["bash", str(flink_home() / "bin" / script), action],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise StackError(f"{script} {action} failed: {(result.stderr or result.stdout).strip()}")

    def restart_taskmanager(self, kill: bool = False) -> None:
        """Restart the TaskManager (fresh thread-mode Python interpreters; new job code).

        ``kill=True`` kills it with SIGKILL first (a crash: no clean shutdown, running
        tasks fail and the job recovers from its last checkpoint).
        """
        old = {tm["id"] for tm in self.rest("/taskmanagers").get("taskmanagers", [])}
        pid = self.pids().get("taskmanager")
        if pid is not None:
            stop_pid(pid, MARKER, timeout_s=0 if kill else 30)
        for pid_file in (self.home / "run").glob("flink-*-taskexecutor.pid"):
            pid_file.unlink(missing_ok=True)
        self._daemon("taskmanager.sh", "start")
        # the old TaskManager may stay listed until its heartbeat times out: wait for a new id
        wait_for(
            lambda: any(tm["id"] not in old for tm in self.rest("/taskmanagers").get("taskmanagers", [])),
            self.start_timeout_s,
            "The restarted TaskManager",
            interval_s=0.5,
        )

    def wait_ready(self) -> None:
        """Wait until the REST API reports at least one registered TaskManager."""

        def alive() -> bool:
            return len(self.pids()) == len(DAEMONS)

        wait_for(
            lambda: len(self.rest("/taskmanagers").get("taskmanagers", [])) > 0,
            self.start_timeout_s,
            f"The Flink cluster on {self.rest_url}",
            interval_s=0.5,
            alive=alive,
            log_hint=lambda: f" Last JobManager log lines:\n{tail(self._log('standalonesession'))}",
        )

    def _log(self, daemon: str) -> Path:
        # the newest by time: a name sort would pick a stale "-1-" log of an earlier second TaskManager
        logs = sorted(self.log_dir.glob(f"flink-*-{daemon}-*.log"), key=lambda p: p.stat().st_mtime)
        return logs[-1] if logs else self.log_dir / "missing.log"

    def rest(self, path: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
        """Call the REST API and return the decoded JSON."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.rest_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"{}")

    def stop(self) -> bool:
        """Stop the daemons started from ``home`` (pid files), and only those."""
        stopped = False
        for pid in self.pids().values():
            stopped |= stop_pid(pid, MARKER, timeout_s=30)
        for pid_file in (self.home / "run").glob("flink-*.pid"):
            pid_file.unlink(missing_ok=True)
        return stopped

    def flink_cmd(self, *args: str) -> list[str]:
        """Return a ``flink`` CLI command line bound to this cluster."""
        return ["bash", str(flink_home() / "bin" / "flink"), *args]

    def run(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        """Run the ``flink`` CLI against this cluster and return the completed process."""
        return subprocess.run(
            self.flink_cmd(*args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )


def _site_packages() -> str:
    out = subprocess.run(
        [str(venv_python()), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _java_opts(home: Path) -> str:
    conf = yaml.safe_load((home / "conf" / "config.yaml").read_text())
    opts = conf.get("env", {}).get("java", {}).get("opts", {}).get("all", "")
    return str(opts)


def saved_rest_port(home: Path, default: int) -> int:
    """Return the REST port the cluster in ``home`` was started on, else ``default``."""
    saved = home / "rest-port"
    return int(saved.read_text()) if saved.exists() else default


def default_home() -> Path:
    """Return the runtime folder of the cluster that ``scripts/cluster`` manages."""
    return RUN_DIR / "flink"


_RENDER_LOG_CONFS = (
    "log4j.properties",
    "log4j-console.properties",
    "log4j-cli.properties",
    "log4j-session.properties",
    "logback.xml",
    "logback-console.xml",
)


def render_conf(
    conf_dir: Path,
    *,
    rpc_host: str = "127.0.0.1",
    bind_host: str = "127.0.0.1",
    rest_port: int = 8081,
    rpc_port: int = 6123,
    slots: int = 8,
    state_dir: Path | None = None,
    taskmanager_host: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a complete FLINK_CONF_DIR into ``conf_dir`` without starting anything.

    For daemons started by someone else, e.g. containers running ``jobmanager.sh
    start-foreground`` (conf/docker/entrypoint.sh). The values are those of
    :meth:`LocalFlinkCluster.config` (same project file, same venv python), with the
    addresses replaced: JobManager RPC and REST at ``rpc_host``, every listener bound to
    ``bind_host``. ``taskmanager_host=None`` drops ``taskmanager.host`` so a TaskManager
    advertises the address it reaches the JobManager from. Checkpoints and savepoints go to
    ``state_dir`` (default: ``conf_dir``'s parent); logs and pid files next to ``conf_dir``
    (``../log``, ``../run``). Returns the written ``config.yaml``.
    """
    conf_dir = conf_dir.resolve()
    home = conf_dir.parent
    state = (state_dir or home).resolve()
    log_dir, pid_dir = home / "log", home / "run"
    for folder in (conf_dir, log_dir, pid_dir, state / "checkpoints", state / "savepoints"):
        folder.mkdir(parents=True, exist_ok=True)
    addresses: dict[str, Any] = {
        "jobmanager.rpc.address": rpc_host,
        "jobmanager.bind-host": bind_host,
        "taskmanager.bind-host": bind_host,
        "rest.address": rpc_host,
        "rest.bind-address": bind_host,
        "execution.checkpointing.dir": (state / "checkpoints").as_uri(),
        "execution.checkpointing.savepoint-dir": (state / "savepoints").as_uri(),
        "env.pid.dir": str(pid_dir),
        "env.log.dir": str(log_dir),
    }
    if taskmanager_host:
        addresses["taskmanager.host"] = taskmanager_host
    spec = LocalFlinkCluster(
        home=home,
        rest_port=rest_port,
        rpc_port=rpc_port,
        slots=slots,
        extra={**addresses, **(overrides or {})},
    )
    conf = spec.config()
    if not taskmanager_host:
        conf.pop("taskmanager.host", None)
    dist_conf = flink_home() / "conf"
    for name in _RENDER_LOG_CONFS:
        if (dist_conf / name).exists():
            shutil.copy(dist_conf / name, conf_dir / name)
    path = conf_dir / "config.yaml"
    path.write_text(yaml.safe_dump(conf, sort_keys=True))
    (conf_dir / "masters").write_text(f"{rpc_host}:{rest_port}\n")
    (conf_dir / "workers").write_text(f"{taskmanager_host or rpc_host}\n")
    return path


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into Flink options (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise StackError(f"--set {pair!r} must look like KEY=VALUE, e.g. taskmanager.numberOfTaskSlots=4")
        out[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
    return out


def _render_main(args: argparse.Namespace) -> int:
    try:
        path = render_conf(
            Path(args.conf_dir),
            rpc_host=args.rpc_host,
            bind_host=args.bind_host,
            rest_port=args.rest_port,
            rpc_port=args.rpc_port,
            slots=args.slots,
            state_dir=Path(args.state_dir) if args.state_dir else None,
            taskmanager_host=args.taskmanager_host,
            overrides=_parse_sets(args.set),
        )
    except (StackError, OSError, yaml.YAMLError) as exc:
        print(f"error: cannot render the Flink configuration into {args.conf_dir}: {exc}", file=sys.stderr)
        return 1
    print(f"flink conf rendered: {path} (jobmanager {args.rpc_host}:{args.rpc_port}, bind {args.bind_host})")
    return 0


def _rendered_with_prometheus(cluster: LocalFlinkCluster) -> bool:
    """Say whether the cluster's rendered config.yaml has the Prometheus reporter on."""
    path = cluster.conf_dir / "config.yaml"
    if not path.exists():
        return False
    conf = yaml.safe_load(path.read_text()) or {}
    return "metrics.reporter.prom.factory.class" in conf


def _print_prometheus(cluster: LocalFlinkCluster) -> None:
    ports = cluster.prometheus_ports()
    if ports:
        where = ", ".join(f"{role} http://127.0.0.1:{port}/metrics" for role, port in ports.items())
        print(f"prometheus: {where}")
    else:
        print(f"prometheus: on (ports {PROMETHEUS_PORTS}), endpoints not reported in the logs yet")


def main(argv: list[str] | None = None) -> int:
    """Run the ``scripts/cluster`` command line."""
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start JobManager + TaskManager (idempotent)")
    start.add_argument("--rest-port", type=int, default=None, help="REST/UI port (default 8081)")
    start.add_argument("--slots", type=int, default=8)
    start.add_argument(
        "--prometheus",
        action="store_true",
        default=os.environ.get("NOTIFY_FLINK_PROMETHEUS", "") not in ("", "0"),
        help=f"Prometheus /metrics on ports {PROMETHEUS_PORTS} (or NOTIFY_FLINK_PROMETHEUS=1)",
    )
    sub.add_parser("stop", help="stop the daemons this script started")
    sub.add_parser("restart-taskmanager", help="restart the TaskManager (load new pipeline code)")
    sub.add_parser("status", help="say whether the cluster runs, with its TaskManagers and jobs")
    render = sub.add_parser(
        "render",
        help="only write a FLINK_CONF_DIR (for daemons run in the foreground, e.g. in containers)",
    )
    render.add_argument("--conf-dir", required=True, help="folder to write config.yaml & co. into")
    render.add_argument("--rpc-host", default="127.0.0.1", help="JobManager address (RPC and REST)")
    render.add_argument("--bind-host", default="127.0.0.1", help="address all daemons listen on")
    render.add_argument("--rest-port", type=int, default=8081)
    render.add_argument("--rpc-port", type=int, default=6123)
    render.add_argument("--slots", type=int, default=8)
    render.add_argument(
        "--state-dir", default=None, help="checkpoints/ and savepoints/ go here (default: conf dir's parent)"
    )
    render.add_argument(
        "--taskmanager-host",
        default=None,
        help="address a TaskManager advertises (default: unset, Flink picks the one reaching the JobManager)",
    )
    render.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any Flink option")
    args = parser.parse_args(argv)
    if args.cmd == "render":
        return _render_main(args)
    home = default_home()
    port = getattr(args, "rest_port", None) or saved_rest_port(
        home, int(os.environ.get("NOTIFY_FLINK_REST_PORT", "8081"))
    )
    cluster = LocalFlinkCluster(
        home=home,
        rest_port=port,
        slots=getattr(args, "slots", 8),
        prometheus=getattr(args, "prometheus", False),
    )
    try:
        if args.cmd == "start":
            was = bool(cluster.pids())
            if was and cluster.prometheus and not _rendered_with_prometheus(cluster):
                print(
                    "note: the running cluster was started without the Prometheus reporter; "
                    "scripts/cluster stop, then start --prometheus",
                    file=sys.stderr,
                )
            cluster.start()
            state = "already running" if was else "started"
            print(f"flink cluster {state}: UI and REST on {cluster.rest_url} (logs in {cluster.log_dir})")
            if cluster.prometheus and _rendered_with_prometheus(cluster):
                _print_prometheus(cluster)
        elif args.cmd == "stop":
            print(
                "flink cluster stopped"
                if cluster.stop()
                else "flink cluster was not running (nothing of ours to stop)"
            )
        elif args.cmd == "restart-taskmanager":
            if not cluster.pids():
                raise StackError("the cluster is not running; start it with scripts/cluster start")
            cluster.restart_taskmanager()
            print("taskmanager restarted")
        elif args.cmd == "status":
            pids = cluster.pids()
            if not pids:
                print("flink cluster: not running")
                return 3
            overview = cluster.rest("/overview")
            print(
                f"flink cluster: running on {cluster.rest_url}, pids {pids}, "
                f"taskmanagers={overview.get('taskmanagers')}, slots={overview.get('slots-total')} "
                f"(free {overview.get('slots-available')}), "
                f"jobs running={overview.get('jobs-running')}"
            )
            if _rendered_with_prometheus(cluster):
                _print_prometheus(cluster)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
