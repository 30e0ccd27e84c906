"""The Prometheus reporter: off by default, one switch turns it on, the plugin jar is there. No JVM."""

from __future__ import annotations

import zipfile

import yaml

from ops.cluster import (
    PROMETHEUS_FACTORY,
    LocalFlinkCluster,
    plugins_dir,
    prometheus_jar,
    prometheus_options,
    render_conf,
)
from ops.paths import CONF_DIR

KEYS = {"metrics.reporter.prom.factory.class", "metrics.reporter.prom.port"}


def test_off_by_default_on_with_the_switch(tmp_path):
    assert not KEYS & LocalFlinkCluster(home=tmp_path).config().keys()
    conf = LocalFlinkCluster(home=tmp_path, prometheus=True).config()
    assert conf["metrics.reporter.prom.factory.class"] == (
        "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    )
    assert conf["metrics.reporter.prom.port"] == "9249-9260"


def test_rendered_config_file_carries_the_reporter(tmp_path):
    path = render_conf(tmp_path / "conf", overrides=prometheus_options())
    rendered = yaml.safe_load(path.read_text())
    assert {k: rendered[k] for k in KEYS} == prometheus_options()


def test_commented_block_in_the_project_config_matches_the_switch():
    text = (CONF_DIR / "flink" / "config.yaml").read_text()
    assert not KEYS & yaml.safe_load(text).keys()  # off by default
    commented = "\n".join(
        line.removeprefix("# ") for line in text.splitlines() if line.startswith("# metrics.reporter.prom.")
    )
    assert yaml.safe_load(commented) == prometheus_options()


def test_the_daemons_plugins_dir_holds_the_reporter_jar(tmp_path):
    env = LocalFlinkCluster(home=tmp_path).env()
    assert env["FLINK_PLUGINS_DIR"] == str(plugins_dir())
    jar = prometheus_jar()
    assert jar is not None and jar.parent == plugins_dir() / "metrics-prometheus"
    with zipfile.ZipFile(jar) as archive:
        names = set(archive.namelist())
        factories = archive.read("META-INF/services/org.apache.flink.metrics.reporter.MetricReporterFactory")
    assert PROMETHEUS_FACTORY.replace(".", "/") + ".class" in names
    assert PROMETHEUS_FACTORY in factories.decode()


def test_endpoints_are_read_from_the_daemons_logs(tmp_path):
    cluster = LocalFlinkCluster(home=tmp_path)
    assert cluster.prometheus_ports() == {}
    cluster.log_dir.mkdir()
    line = "INFO  o.a.f.m.p.PrometheusReporter [] - Started PrometheusReporter HTTP server on port {}.\n"
    (cluster.log_dir / "flink-me-standalonesession-0-host.log").write_text(line.format(9249))
    (cluster.log_dir / "flink-me-taskexecutor-0-host.log").write_text("starting\n" + line.format(9251))
    assert cluster.prometheus_ports() == {"jobmanager": 9249, "taskmanager": 9251}
