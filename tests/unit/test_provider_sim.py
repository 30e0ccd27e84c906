import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.provider_sim import (
    PortInUseError,
    ProviderSim,
    ProviderSimError,
    SimClient,
    load_config,
)
from udfs.delivery_policy import ErrorClass, RetryPolicy, classify

ROOT = Path(__file__).resolve().parents[2]
FAST = {"latency": {"model": "fixed", "ms": 0}}
CONFIG: dict[str, Any] = {
    "defaults": FAST,
    "channels": {
        "email": {"recipient_fields": ["to", "email"]},
        "sms": {"recipient_fields": ["to", "phone"]},
        "push": {"recipient_fields": ["to", "push_token"]},
        "webhook": {"recipient_fields": ["url"]},
    },
}


def msg(i: int | str, to: str = "a@example.com") -> dict[str, Any]:
    return {"to": to, "event_id": f"e{i}", "subject": "hi"}


class Sim:
    """A running simulator plus a client, for one test."""

    def __init__(self, ledger: Path, config: Any = CONFIG, seed: int = 7) -> None:
        self.ledger = ledger
        self.sim = ProviderSim(config, ledger, seed=seed)
        host, port = self.sim.start("127.0.0.1", 0)
        self.url = f"http://{host}:{port}"
        self.client = SimClient(self.url, timeout_s=5)

    def stop(self) -> None:
        self.client.close()
        self.sim.stop()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    s = Sim(tmp_path / "ledger.db")
    try:
        yield s
    finally:
        s.stop()


def test_start_reports_real_port_and_health(sim: Sim) -> None:
    assert sim.sim.address is not None and sim.sim.address[1] > 0
    health = sim.client.health()
    assert health == {"status": "ok", "channels": ["email", "push", "sms", "webhook"]}


def test_repeat_key_returns_first_answer_and_one_ledger_row(sim: Sim) -> None:
    c = sim.client
    first = c.send("email", msg(1), "e1:email")
    again = c.send("email", msg(1), "e1:email")
    assert first.status == again.status == 200
    assert again.body == first.body
    assert (first.replayed, again.replayed) == (False, True)
    rows = c.ledger("email")
    assert len(rows) == 1
    assert rows[0]["idempotency_key"] == "e1:email"
    assert rows[0]["event_ids"] == ["e1"]
    assert (rows[0]["attempt"], rows[0]["attempts"]) == (1, 2)
    stats = c.stats()["channels"]["email"]
    assert (stats["requests"], stats["accepted"], stats["duplicates"]) == (2, 1, 1)
    # keys are per provider: the same key on another channel is a new delivery
    assert not c.send("sms", {"to": "+4915", "event_id": "e1"}, "e1:email").replayed
    assert c.ledger_count() == 2


def test_error_rate_is_seeded_and_retries_get_through(tmp_path: Path) -> None:
    def run(seed: int, path: Path) -> list[int | None]:
        s = Sim(path, seed=seed)
        try:
            s.client.set_behaviour("sms", {"error_rate": 0.3})
            out = [s.client.send("sms", {"to": "+49"}, f"k{i}").status for i in range(100)]
            assert s.client.ledger_count("sms") == out.count(200)
            errors = s.client.stats()["channels"]["sms"]["errors"]
            assert errors == {"unavailable": out.count(503)}
            # retrying the failed keys with the same key eventually gets them all accepted
            s.client.set_behaviour("sms", {"error_rate": 0.0})
            for i, st in enumerate(out):
                if st == 503:
                    assert s.client.send("sms", {"to": "+49"}, f"k{i}").status == 200
            assert s.client.ledger_count("sms") == 100
            return out
        finally:
            s.stop()

    a = run(3, tmp_path / "a.db")
    assert set(a) == {200, 503}
    assert 15 <= a.count(503) <= 45
    assert run(3, tmp_path / "b.db") == a
    assert run(4, tmp_path / "c.db") != a


def test_rate_429_with_retry_after(sim: Sim) -> None:
    c = sim.client
    c.set_behaviour("push", {"rate_429": 1.0, "retry_after_s": 3})
    r = c.send("push", {"push_token": "tok"}, "p1")
    assert (r.status, r.error_code, r.retry_after_s) == (429, "rate_limited", 3.0)
    assert classify(r.status, r.error_code, r.timed_out, RetryPolicy()) is ErrorClass.RETRYABLE
    assert c.ledger_count("push") == 0
    c.set_behaviour("push", {"rate_429": 0.0})
    assert c.send("push", {"push_token": "tok"}, "p1").status == 200
    assert c.attempts("push", "p1")[0]["attempts"] == 2


def test_token_bucket_rate_limit(sim: Sim) -> None:
    c = sim.client
    c.set_behaviour("email", {"rate_limit_per_s": 1, "rate_limit_burst": 2})
    statuses = [c.send("email", msg(i), f"k{i}") for i in range(3)]
    assert [r.status for r in statuses] == [200, 200, 429]
    assert statuses[2].retry_after_s is not None and statuses[2].retry_after_s >= 1


def test_invalid_recipients_fail_permanently(sim: Sim) -> None:
    c = sim.client
    c.set_behaviour("email", {"invalid_recipients": ["blocked@example.com"]})
    policy = RetryPolicy(non_retryable_errors=("invalid_recipient",))
    for i, to in enumerate(["invalid@example.com", "x.invalid.y@example.com", "blocked@example.com"]):
        r = c.send("email", msg(i, to), f"bad{i}")
        assert (r.status, r.error_code) == (400, "invalid_recipient")
        assert classify(r.status, r.error_code, False, policy) is ErrorClass.NON_RETRYABLE
    again = c.send("email", msg(0, "invalid@example.com"), "bad0")
    assert again.replayed and again.status == 400
    nested = c.send("email", {"recipient": {"email": "invalid@x.org"}}, "nested")
    assert nested.error_code == "invalid_recipient"
    missing = c.send("email", {"event_id": "e9"}, "nobody")
    assert (missing.status, missing.error_code) == (400, "missing_recipient")
    assert c.ledger_count("email") == 0
    assert c.send("email", msg(5), "good").status == 200


def test_outage_on_and_off(sim: Sim) -> None:
    c = sim.client
    c.set_outage("email", True)
    r = c.send("email", msg(1), "k1")
    assert (r.status, r.error_code) == (503, "outage")
    assert c.send("sms", {"to": "+49"}, "k1").status == 200  # other channels unaffected
    assert c.stats()["channels"]["email"]["outage"] is True
    c.set_outage("email", False)
    assert c.send("email", msg(1), "k1").status == 200
    row = c.ledger("email")[0]
    assert (row["attempt"], row["attempts"]) == (2, 2)


def test_timed_outage_and_outage_window(tmp_path: Path) -> None:
    cfg = {**CONFIG, "channels": {"email": {"outage_windows": [[0, 0.3]]}, "sms": {}}}
    s = Sim(tmp_path / "l.db", config=cfg)
    try:
        assert s.client.send("email", msg(1), "k1").error_code == "outage"
        s.client.set_outage("sms", True, duration_s=0.3)
        assert s.client.send("sms", {"to": "+1"}, "s1").error_code == "outage"
        time.sleep(0.35)
        assert s.client.send("email", msg(1), "k1").status == 200
        assert s.client.send("sms", {"to": "+1"}, "s1").status == 200
    finally:
        s.stop()


def test_bulk_partial_results_and_batch_key(sim: Sim) -> None:
    c = sim.client
    assert c.send("email", msg(0), "k0").status == 200
    batch = [
        {**msg(1), "idempotency_key": "k1"},
        {**msg(2, "invalid@example.com"), "idempotency_key": "k2"},
        {**msg(0), "idempotency_key": "k0"},  # sent before
        {**msg(1), "idempotency_key": "k1"},  # repeated inside the batch
        {**msg(3), "idempotency_key": "k3"},
    ]
    r = c.bulk("email", batch, batch_key="b1")
    assert r.status == 200
    res = r.body["results"]
    assert [x["status"] for x in res] == [200, 400, 200, 200, 200]
    assert [x.get("replayed", False) for x in res] == [False, False, True, True, False]
    assert res[1]["error"] == "invalid_recipient"
    assert (r.body["accepted"], r.body["failed"], r.body["replayed"]) == (4, 1, 2)
    rows = {row["idempotency_key"]: row for row in c.ledger("email")}
    assert set(rows) == {"k0", "k1", "k3"}
    assert rows["k1"]["batch_id"] == "b1" and rows["k0"]["batch_id"] is None
    again = c.bulk("email", batch, batch_key="b1")
    assert again.replayed and again.body == r.body
    assert c.ledger_count("email") == 3


def test_bulk_transient_failures_are_not_stored(sim: Sim) -> None:
    c = sim.client
    batch = [{**msg(i), "idempotency_key": f"k{i}"} for i in range(4)]
    c.set_behaviour("email", {"error_rate": 1.0})
    r = c.bulk("email", batch, batch_key="b")
    assert [x["error"] for x in r.body["results"]] == ["unavailable"] * 4
    c.set_behaviour("email", {"error_rate": 0.0})
    r2 = c.bulk("email", batch, batch_key="b")
    assert not r2.replayed and r2.body["accepted"] == 4
    assert c.ledger_count("email") == 4
    c.set_behaviour("email", {"max_bulk": 3})
    assert c.bulk("email", batch).status == 413


def test_bad_requests(sim: Sim) -> None:
    c = sim.client
    status, _, body = c.request("POST", "/v1/email/send", msg(1))  # no Idempotency-Key
    assert (status, body["error"]) == (400, "missing_idempotency_key")
    status, _, body = c.request("POST", "/v1/email/bulk", {"messages": [{"to": "x"}]})
    assert status == 400
    r = c.send("fax", msg(1), "k")
    assert (r.status, r.error_code) == (404, "unknown_channel")
    with pytest.raises(ProviderSimError, match="400"):
        c.set_behaviour("email", {"eror_rate": 0.5})
    with pytest.raises(ProviderSimError, match="400"):
        c.set_behaviour("email", {"error_rate": 2})
    with pytest.raises(ProviderSimError, match="404"):
        c.set_outage("fax", True)


def test_channel_added_by_config(sim: Sim) -> None:
    r = sim.client.send("webhook", {"url": "https://hooks.example/x", "event_id": "e1"}, "w1")
    assert r.status == 200
    assert sim.client.ledger("webhook")[0]["channel"] == "webhook"


def test_timeout_hangs_past_client_timeout(sim: Sim) -> None:
    c = sim.client
    c.set_behaviour("email", {"timeout_rate": 1.0, "hang_s": 5, "timeout_delivers": True})
    t0 = time.monotonic()
    r = c.send("email", msg(1), "k1", timeout_s=0.2)
    assert r.timed_out and r.status is None and r.error_code == "timeout"
    assert time.monotonic() - t0 < 1.0
    assert classify(r.status, r.error_code, r.timed_out, RetryPolicy()) is ErrorClass.RETRYABLE
    c.set_behaviour("email", {"timeout_rate": 0.0})
    retry = c.send("email", msg(1), "k1")  # delivered during the "timeout": a duplicate now
    assert retry.status == 200 and retry.replayed
    assert c.ledger_count("email") == 1
    # a hanging handler does not hold up stop()
    c.set_behaviour("email", {"timeout_rate": 1.0, "timeout_delivers": False})
    assert c.send("email", msg(2), "k2", timeout_s=0.1).timed_out
    assert c.ledger_count("email") == 1
    t0 = time.monotonic()
    sim.sim.stop()
    assert time.monotonic() - t0 < 2.0


def test_ledger_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    s = Sim(path)
    try:
        first = [s.client.send("email", msg(i), f"k{i}") for i in range(3)]
    finally:
        s.stop()
    assert (tmp_path / "ledger.db").exists()
    s = Sim(path)
    try:
        assert s.client.ledger_count("email") == 3
        again = s.client.send("email", msg(1), "k1")
        assert again.replayed and again.body == first[1].body
        assert s.client.ledger_count("email") == 3
    finally:
        s.stop()


def test_reset_clears_ledger_counters_and_behaviour(sim: Sim) -> None:
    c = sim.client
    c.set_behaviour("email", {"error_rate": 1.0})
    c.send("email", msg(1), "k1")
    c.set_behaviour("email", {"error_rate": 0.0})
    c.send("email", msg(1), "k1")
    c.set_behaviour("email", {"error_rate": 1.0})
    c.reset()
    assert c.ledger_count() == 0 and c.attempts() == []
    assert c.stats()["channels"]["email"]["requests"] == 0
    assert c.send("email", msg(1), "k1").status == 200  # behaviour back to config


def test_key_reuse_with_other_message_can_be_rejected(sim: Sim) -> None:
    c = sim.client
    c.set_behaviour("email", {"reject_key_reuse": True})
    assert c.send("email", msg(1), "k1").status == 200
    r = c.send("email", msg(2), "k1")
    assert (r.status, r.error_code) == (422, "idempotency_key_reuse")
    assert c.send("email", msg(1), "k1").replayed


def test_logs_carry_no_recipients(sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = sim.client
    c.set_behaviour("sms", {"invalid_recipients": ["+491111"]})
    c.send("sms", {"to": "+491111"}, "s1")
    c.send("email", msg(1, "secret.person@example.com"), "k1")
    c.set_outage("email", True)
    c.bulk("email", [{**msg(2, "other@example.com"), "idempotency_key": "k2"}])
    text = caplog.text
    assert "behaviour of sms patched" in text  # logging works at all
    for pii in ("+491111", "example.com", "secret"):
        assert pii not in text


def test_latency_models() -> None:
    cfg = load_config(
        {"channels": {"a": {"latency": {"model": "lognormal", "median_ms": 10, "p99_ms": 100}}}}
    )
    beh = cfg.channels["a"]
    rng = random.Random(1)
    draws = sorted(beh.latency_s(rng) * 1000 for _ in range(20000))
    assert 9 < draws[10000] < 11
    assert 85 < draws[19800] < 115
    fixed = beh.patched({"latency": {"model": "fixed", "ms": 7, "per_message_ms": 1}})
    assert fixed.latency_s(rng, n_messages=3) == pytest.approx(0.010)
    uni = beh.patched({"latency": {"model": "uniform", "min_ms": 2, "max_ms": 4}})
    assert all(0.002 <= uni.latency_s(rng) <= 0.004 for _ in range(1000))


def test_fixed_latency_is_applied(sim: Sim) -> None:
    sim.client.set_behaviour("email", {"latency": {"model": "fixed", "ms": 60}})
    t0 = time.monotonic()
    sim.client.send("email", msg(1), "k1")
    assert time.monotonic() - t0 >= 0.06


def test_shipped_config_and_validation() -> None:
    cfg = load_config(ROOT / "conf" / "providers.yaml")
    assert set(cfg.channels) >= {"email", "sms", "push"}
    for beh in cfg.channels.values():
        assert beh.latency_model == "uniform" and beh.latency_args == (0.0, 5.0)
        assert beh.error_rate == beh.rate_429 == beh.timeout_rate == 0.0
        assert not beh.outage
    with pytest.raises(ValueError, match="unknown behaviour key"):
        load_config({"defaults": {"latencyy": {}}})
    with pytest.raises(ValueError, match=r"channel 'sms'.*error_rate"):
        load_config({"channels": {"sms": {"error_rate": -0.1}}})
    with pytest.raises(ValueError, match=r"latency\.model"):
        load_config({"defaults": {"latency": {"model": "gaussian"}}})
    with pytest.raises(ValueError, match="outage window"):
        load_config({"defaults": {"outage_windows": [[5, 1]]}})


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "scripts")])
    return env


def test_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(PortInUseError, match="already in use"):
            ProviderSim(CONFIG, tmp_path / "x.db").start("127.0.0.1", port)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ops.provider_sim", "--port", str(port)],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode not in (0, None)
    assert out == ""
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert err.strip().count("\n") == 0  # one sentence, no traceback


def test_cli_prints_port_writes_port_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            str(ROOT / "scripts" / "provider-sim"),
            "--port",
            "0",
            "--config",
            str(ROOT / "conf" / "providers.yaml"),
            "--ledger",
            str(tmp_path / "cli.db"),
            "--seed",
            "3",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("provider-sim listening on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert port > 0 and port_file.read_text().strip() == str(port)
        with SimClient(f"http://127.0.0.1:{port}") as c:
            assert c.send("email", msg(1), "k1").status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wrapper_without_venv_says_to_run_setup(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "provider-sim", tmp_path / "scripts" / "provider-sim")
    r = subprocess.run(
        [str(tmp_path / "scripts" / "provider-sim"), "--help"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert r.returncode != 0
    assert "run scripts/setup" in r.stderr
