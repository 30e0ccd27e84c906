"""The Prometheus reporter on the session cluster (started with it on): each daemon serves flink_ metrics."""

from __future__ import annotations

import urllib.request

import pytest

pytestmark = pytest.mark.e2e


def test_each_daemon_serves_flink_metrics(flink_cluster):
    ports = flink_cluster.prometheus_ports()
    assert set(ports) == {"jobmanager", "taskmanager"}, ports
    for role, port in ports.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert f"\nflink_{role}_" in text, f"{role} on {port}: {text[:500]}"
