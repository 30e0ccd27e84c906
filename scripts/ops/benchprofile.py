"""Where the fan-out job spends its time (``scripts/bench profile``).

The job runs on a backlog on the local standalone cluster (thread mode: the Python
operators run inside the TaskManager JVM). Once its first output is out, the TaskManager is
sampled for ``--seconds`` by two profilers at once:

- JDK Flight Recorder (``jcmd JFR.start``, ``settings=profile``): Java execution samples and
  native-method samples (a thread inside the embedded interpreter shows as a native
  ``pemja`` frame), aggregated per task thread and per method (self and total).
- py-spy (``py-spy record --format raw``) on the same process: the embedded interpreter's
  Python stacks, aggregated per function (self and total).

The report (``docs/benchmarks/profile.json`` and a Markdown summary) is what the speed work
in docs/benchmarks.md starts from.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ops.paths import ROOT

VENV_BIN = ROOT / ".venv" / "bin"
_TASK = re.compile(r"\s*\(\d+/\d+\)#\d+$")


def _thread_group(name: str) -> str:
    """Map a JVM thread name to its Flink task (subtask suffix dropped) or a coarse kind."""
    if "(" in name and "#" in name:
        return _TASK.sub("", name)
    for prefix in ("Kafka", "kafka", "Legacy Source", "Checkpoint", "pool-", "Flink", "AsyncOperations"):
        if name.startswith(prefix):
            return prefix + "*"
    return "other"


def jfr_profile(pid: int, seconds: int, work: Path) -> dict[str, Any]:
    """Sample the JVM ``pid`` with Flight Recorder; return per-thread and per-method counts."""
    out = work / f"tm-{pid}.jfr"
    subprocess.run(
        ["jcmd", str(pid), "JFR.start", "name=bench", "settings=profile", f"filename={out}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    time.sleep(seconds)
    subprocess.run(
        ["jcmd", str(pid), "JFR.stop", "name=bench"], capture_output=True, text=True, check=True, timeout=120
    )
    printed = subprocess.run(
        [
            "jfr",
            "print",
            "--json",
            "--stack-depth",
            "64",
            "--events",
            "jdk.ExecutionSample,jdk.NativeMethodSample",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    events = json.loads(printed.stdout)["recording"]["events"]
    by_thread: collections.Counter[str] = collections.Counter()
    self_ms: collections.Counter[str] = collections.Counter()
    total_ms: collections.Counter[str] = collections.Counter()
    native_by_thread: collections.Counter[str] = collections.Counter()
    java = 0
    for ev in events:
        v = ev["values"]
        thread = (v.get("sampledThread") or {}).get("javaName") or "?"
        group = _thread_group(thread)
        frames = ((v.get("stackTrace") or {}).get("frames")) or []
        names = [f"{f['method']['type']['name']}.{f['method']['name']}" for f in frames]
        if ev["type"] == "jdk.NativeMethodSample":
            native_by_thread[group] += 1
            continue
        java += 1
        by_thread[group] += 1
        if names:
            self_ms[names[0]] += 1
        for name in set(names):
            total_ms[name] += 1
    compiled = subprocess.run(
        ["jfr", "print", "--json", "--events", "jdk.Compilation,jdk.Deoptimization", str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    jit: collections.Counter[str] = collections.Counter()
    jit_ms: dict[str, float] = collections.defaultdict(float)
    deopt: collections.Counter[str] = collections.Counter()
    for ev in json.loads(compiled.stdout)["recording"]["events"]:
        v = ev["values"]
        method = v.get("method") or {}
        cls = ((method.get("type") or {}).get("name") or "?").split("$")[0]
        if ev["type"] == "jdk.Compilation":
            jit[cls] += 1
            jit_ms[cls] += _duration_ms(v.get("duration"))
        else:
            deopt[cls] += 1
    return {
        "jit_compilations": sum(jit.values()),
        "jit_ms_by_class": [(c, round(ms)) for c, ms in sorted(jit_ms.items(), key=lambda kv: -kv[1])[:15]],
        "jit_count_by_class": jit.most_common(15),
        "deoptimizations_by_class": deopt.most_common(15),
        "java_samples": java,
        "java_samples_by_task": by_thread.most_common(20),
        "native_samples_by_task": native_by_thread.most_common(20),
        "top_self": self_ms.most_common(40),
        "top_total": [(n, c) for n, c in total_ms.most_common(120) if not n.startswith("java.lang.Thread")][
            :60
        ],
    }


def _duration_ms(text: Any) -> float:
    """JFR JSON durations look like 'PT0.001234S'."""
    if not isinstance(text, str) or not text.startswith("PT"):
        return 0.0
    m = re.match(r"PT(?:(\d+)M)?([\d.]+)S", text)
    if not m:
        return 0.0
    return (int(m.group(1) or 0) * 60 + float(m.group(2))) * 1000


def pyspy_profile(pid: int, seconds: int, work: Path) -> dict[str, Any]:
    """Sample the embedded interpreter of ``pid`` with py-spy; return per-function counts."""
    out = work / f"py-{pid}.txt"
    proc = subprocess.run(
        [
            str(VENV_BIN / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--threads",
            # only samples taken while a thread holds the GIL: in thread mode every Python
            # operator shares one interpreter, so a thread waiting for the GIL would
            # otherwise count as time in whatever frame it waits in
            "--gil",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 120,
    )
    if proc.returncode != 0 or not out.exists():
        return {"error": (proc.stderr or proc.stdout)[-800:]}
    self_n: collections.Counter[str] = collections.Counter()
    total_n: collections.Counter[str] = collections.Counter()
    by_thread: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        by_thread[frames[0]] += n
        funcs = [f for f in frames[1:]]
        if funcs:
            self_n[_short(funcs[-1])] += n
        for f in {_short(f) for f in funcs}:
            total_n[f] += n
    return {
        "samples": samples,
        # share of the wall time in which some thread held the GIL (200 samples/s)
        "gil_held_fraction": round(samples / (200 * seconds), 3),
        "by_thread": by_thread.most_common(20),
        "top_self": self_n.most_common(40),
        "top_total": total_n.most_common(60),
    }


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)`` so lines of one function merge."""
    m = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    path = m.group(2)
    short = "/".join(Path(path).parts[-2:])
    return f"{m.group(1)} ({short})"


def thread_cpu(pid: int) -> dict[int, tuple[str, int]]:
    """Return {tid: (thread name, utime + stime ticks)} of every thread of ``pid``."""
    out: dict[int, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(task.name)] = (name, int(fields[11]) + int(fields[12]))
    return out


def cpu_by_thread(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], seconds: float
) -> list[Any]:
    """CPU cores used per thread name (Linux truncates names to 15 characters) between snapshots."""
    import os

    tck = os.sysconf("SC_CLK_TCK")
    used: collections.Counter[str] = collections.Counter()
    for tid, (name, ticks) in after.items():
        used[name] += ticks - before.get(tid, (name, 0))[1]
    return [(name, round(t / tck / seconds, 3)) for name, t in used.most_common(25) if t > 0]


def profile_during(seconds: int) -> Any:
    """Return a ``run_job(during=...)`` hook that runs both profilers on the TaskManager."""

    def during(job: dict[str, Any]) -> dict[str, Any]:
        import threading

        from ops.submit import vertex_metrics

        pid = job["pids"]["taskmanager"]
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
            work = Path(tmp)
            result: dict[str, Any] = {}

            def run_py() -> None:
                result["python"] = pyspy_profile(pid, seconds, work)

            # CPU per thread first, unperturbed by the profilers
            before, t0 = thread_cpu(pid), time.monotonic()
            time.sleep(seconds)
            result["cpu_cores_by_thread"] = cpu_by_thread(before, thread_cpu(pid), time.monotonic() - t0)
            # Flink's own view: per vertex, ms per second busy / backpressured (summed over subtasks)
            result["vertex_ms_per_s"] = {
                metric: vertex_metrics(job["cluster"], job["job_id"], metric)
                for metric in ("busyTimeMsPerSecond", "backPressuredTimeMsPerSecond", "idleTimeMsPerSecond")
            }
            t = threading.Thread(target=run_py)
            t.start()
            try:
                result["jvm"] = jfr_profile(pid, seconds, work)
            except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
                result["jvm"] = {"error": str(exc)[-800:]}
            t.join()
            return result

    return during


def markdown(report: dict[str, Any]) -> str:
    """Render the profile as Markdown tables (top entries only)."""
    lines = [f"# Profile: `{report['command']}`", "", f"{report['date']}, commit {report['commit']}", ""]
    prof = report["run"].get("during") or {}
    jvm, py = prof.get("jvm") or {}, prof.get("python") or {}
    lines += [f"Job throughput while profiled: {report['run'].get('events_per_s')} events/s", ""]

    def table(title: str, rows: list[Any], total: int) -> None:
        lines.extend([f"## {title}", "", "| share | samples | where |", "| ---: | ---: | --- |"])
        for name, n in rows:
            lines.append(f"| {100 * n / max(1, total):.1f}% | {n} | `{name}` |")
        lines.append("")

    cpu = prof.get("cpu_cores_by_thread") or []
    lines.extend(
        [
            "## TaskManager CPU per thread (cores, before the profilers attach)",
            "",
            "| cores | thread |",
            "| ---: | --- |",
        ]
    )
    lines.extend(f"| {c} | `{n}` |" for n, c in cpu)
    lines.append(f"| **{round(sum(c for _, c in cpu), 2)}** | total |")
    lines.append("")
    vms = prof.get("vertex_ms_per_s") or {}
    busy = vms.get("busyTimeMsPerSecond") or {}
    if busy:
        lines.extend(
            [
                "## Flink vertices: ms per second (summed over subtasks)",
                "",
                "| busy | backpressured | idle | vertex |",
                "| ---: | ---: | ---: | --- |",
            ]
        )
        for name in sorted(busy, key=lambda n: -busy[n]):
            bp = (vms.get("backPressuredTimeMsPerSecond") or {}).get(name)
            idle = (vms.get("idleTimeMsPerSecond") or {}).get(name)
            lines.append(f"| {busy[name]:.0f} | {bp or 0:.0f} | {idle or 0:.0f} | `{name[:90]}` |")
        lines.append("")
    if "error" in jvm:
        lines += [f"JFR failed: {jvm['error']}", ""]
    else:
        total = jvm.get("java_samples", 0)
        table("JVM: Java samples per task", jvm.get("java_samples_by_task", []), total)
        table(
            "JVM: native samples per task (time inside the embedded interpreter)",
            jvm.get("native_samples_by_task", []),
            sum(n for _, n in jvm.get("native_samples_by_task", [])),
        )
        lines.append(f"JIT compilations while profiled: {jvm.get('jit_compilations')}")
        lines.append("")
        table("JVM: JIT compile ms by class", jvm.get("jit_ms_by_class", []), 1)
        table("JVM: deoptimizations by class", jvm.get("deoptimizations_by_class", []), 1)
        table("JVM: self time", jvm.get("top_self", [])[:25], total)
        table("JVM: total time", jvm.get("top_total", [])[:40], total)
    if "error" in py:
        lines += [f"py-spy failed: {py['error']}", ""]
    else:
        total = py.get("samples", 0)
        lines += [
            "Python samples are taken only while a thread holds the GIL (`py-spy --gil`); "
            f"the GIL was held {py.get('gil_held_fraction', 0):.0%} of the time.",
            "",
        ]
        table("Python: samples per thread", py.get("by_thread", []), total)
        table("Python: self time", py.get("top_self", [])[:30], total)
        table("Python: total time", py.get("top_total", [])[:40], total)
    return "\n".join(lines) + "\n"
