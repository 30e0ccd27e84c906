from __future__ import annotations

import pytest

from jobs.config import BranchConfig, ConfigError, load_config


def test_defaults_come_from_conf_pipeline_yaml():
    cfg = load_config(env={})
    assert cfg.kafka.bootstrap == "" and not cfg.kafka.enabled
    assert cfg.topics.channel("email") == "notifications.email"
    assert cfg.job.mode == "fanout" and cfg.job.python_execution_mode == "thread"
    assert cfg.events.window_ms == 1000 and cfg.events.regions == ("eu-west", "us-east", "ap-south")
    assert (cfg.job.buffer_timeout_ms, cfg.job.watermark_interval_ms) == (10, 50)
    assert cfg.events.heartbeat_ms == 0 and cfg.job.state_backend == "rocksdb"
    assert cfg.branch("email").slot_sharing_group == "channel-email"
    assert cfg.branch("webhook") == BranchConfig()


def test_env_then_set_overrides_win_in_that_order():
    cfg = load_config(
        env={"NOTIFY__KAFKA__BOOTSTRAP": "127.0.0.1:1", "NOTIFY__JOB__PARALLELISM": "3"},
        overrides=[
            "kafka.bootstrap=127.0.0.1:2",
            "branches.sms.parallelism=4",
            "events.digest_channels=email,push",
        ],
    )
    assert cfg.kafka.bootstrap == "127.0.0.1:2" and cfg.kafka.enabled
    assert cfg.job.parallelism == 3
    assert cfg.branch("sms").parallelism == 4
    assert cfg.events.digest_channels == ("email", "push")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("job.mode=parallel", "job.mode must be one of fanout, linear"),
        ("job.parallelism=two", "job.parallelism must be an integer"),
        ("kafka.bounded=maybe", "kafka.bounded must be true or false"),
        ("nope.key=1", "unknown config section 'nope'"),
        ("job.nope=1", "unknown config key job.nope"),
        ("job.watermark_interval_ms=0", "job.watermark_interval_ms must be at least 1"),
        ("job.buffer_timeout_ms=-2", "job.buffer_timeout_ms must be -1 or more"),
        ("events.heartbeat_ms=-1", "events.heartbeat_ms must be 0"),
        ("branches.sms.speed=1", "unknown config key branches.sms.speed"),
        ("justakey", "must look like section.key=value"),
        ("tracing.exporter=jaeger", "tracing.exporter must be one of none, file, otlp"),
        ("tracing.exporter=file", "tracing.exporter=file needs tracing.file"),
        ("tracing.exporter=otlp", "tracing.exporter=otlp needs tracing.otlp_endpoint"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env={}, overrides=[override])


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", env={})


def test_stale_code_is_refused_with_a_clear_message():
    from jobs import codeversion

    codeversion.check(codeversion.LOADED)  # same code: fine
    codeversion.check("")  # no fingerprint (older client): not checked
    with pytest.raises(RuntimeError, match="stale pipeline code in this TaskManager"):
        codeversion.check("0000000000000000")


def test_tracing_is_off_by_default_and_configurable():
    cfg = load_config(env={})
    assert cfg.tracing.exporter == "none" and cfg.tracing.log_file == "" and cfg.tracing.log_level == "INFO"
    cfg = load_config(
        env={"NOTIFY__TRACING__LOG_FILE": "/tmp/notify.log"},
        overrides=["tracing.exporter=file", "tracing.file=.run/spans.jsonl"],
    )
    assert (cfg.tracing.exporter, cfg.tracing.file, cfg.tracing.log_file) == (
        "file",
        ".run/spans.jsonl",
        "/tmp/notify.log",
    )
