#!/usr/bin/env bash
# Entrypoint of the notify-fanout image (conf/docker/Dockerfile, used by docker-compose.yml).
# Not exercised by CI (no Docker engine); `bash -n` and a dry run are (tests/e2e/test_compose.py).
#
#   jobmanager   [--set KEY=VALUE ...]  Flink JobManager in the foreground (REST/UI on $FLINK_REST_PORT)
#   taskmanager  [--set KEY=VALUE ...]  Flink TaskManager in the foreground, registers with $FLINK_JOBMANAGER_HOST
#   provider-sim [ARGS ...]             provider simulator on 0.0.0.0:$PROVIDER_SIM_PORT (ARGS: ops.provider_sim)
#   client       [CMD ...]              CMD (default: bash) with `flink` on PATH and a conf pointing at the
#                                       JobManager, e.g. client flink run -m jobmanager:8081 -py jobs/roundtrip.py ...
#   anything else is executed as is.
#
# The Flink roles render their conf with `python -m ops.cluster render` (the same values as
# `scripts/cluster start`, addresses replaced) and exec pyflink's own bin/*.sh start-foreground.
# NOTIFY_ENTRYPOINT_DRY_RUN=1 prints the final command instead of running it.
set -euo pipefail

ROOT="${NOTIFY_ROOT:-/app}"
PYTHON="${NOTIFY_PYTHON:-$ROOT/.venv/bin/python}"
JM_HOST="${FLINK_JOBMANAGER_HOST:-jobmanager}"
REST_PORT="${FLINK_REST_PORT:-8081}"
RPC_PORT="${FLINK_RPC_PORT:-6123}"
SLOTS="${FLINK_TASK_SLOTS:-8}"
BIND_HOST="${FLINK_BIND_HOST:-0.0.0.0}"
STATE_DIR="${FLINK_STATE_DIR:-/data/flink}"
WORK_DIR="${FLINK_WORK_DIR:-${HOME:-/tmp}/flink}"
export FLINK_CONF_DIR="${FLINK_CONF_DIR:-$WORK_DIR/conf}"
export FLINK_LOG_DIR="${FLINK_LOG_DIR:-$(dirname "$FLINK_CONF_DIR")/log}"
export USER="${USER:-$(id -un 2>/dev/null || echo notify)}"  # Flink names its pid/log files after it

die() { printf 'entrypoint: error: %s\n' "$*" >&2; exit 1; }
run() {
  if [[ "${NOTIFY_ENTRYPOINT_DRY_RUN:-}" == 1 ]]; then
    printf '%q ' "$@"; printf '\n'; exit 0
  fi
  exec "$@"
}

[[ -x "$PYTHON" ]] || die "no python at $PYTHON (set NOTIFY_PYTHON, or build the image with conf/docker/Dockerfile)."
cd "$ROOT"

flink_home() {
  "$PYTHON" -c 'import os, pyflink; print(os.path.dirname(os.path.abspath(pyflink.__file__)))'
}

render() {  # render [--taskmanager-host H] [--set K=V ...]: write $FLINK_CONF_DIR
  "$PYTHON" -m ops.cluster render \
    --conf-dir "$FLINK_CONF_DIR" \
    --rpc-host "$JM_HOST" \
    --bind-host "$BIND_HOST" \
    --rest-port "$REST_PORT" \
    --rpc-port "$RPC_PORT" \
    --slots "$SLOTS" \
    --state-dir "$STATE_DIR" \
    "$@" >&2
}

role="${1:-}"
if [[ $# -gt 0 ]]; then shift; fi
case "$role" in
  jobmanager)
    render "$@"
    run bash "$(flink_home)/bin/jobmanager.sh" start-foreground
    ;;
  taskmanager)
    # No --taskmanager-host: Flink advertises the address this container reaches the JobManager
    # from, so `docker-compose up --scale taskmanager=N` needs no per-replica configuration.
    advertise=()
    if [[ -n "${FLINK_TASKMANAGER_HOST:-}" ]]; then advertise=(--taskmanager-host "$FLINK_TASKMANAGER_HOST"); fi
    render "${advertise[@]}" "$@"
    run bash "$(flink_home)/bin/taskmanager.sh" start-foreground
    ;;
  provider-sim)
    ledger="${PROVIDER_SIM_LEDGER:-/data/sim/ledger.db}"
    [[ "$ledger" == ":memory:" ]] || mkdir -p "$(dirname "$ledger")"
    run "$PYTHON" -m ops.provider_sim \
      --host "${PROVIDER_SIM_HOST:-0.0.0.0}" \
      --port "${PROVIDER_SIM_PORT:-8090}" \
      --config "${PROVIDER_SIM_CONFIG:-$ROOT/conf/providers.yaml}" \
      --ledger "$ledger" \
      "$@"
    ;;
  client)
    # The client binds nothing; its conf only carries the JobManager address and the venv python.
    BIND_HOST=127.0.0.1 render
    PATH="$(flink_home)/bin:$(dirname "$PYTHON"):$PATH"
    export PATH
    if [[ $# -eq 0 ]]; then set -- bash; fi
    run "$@"
    ;;
  "")
    die "no role given; use one of: jobmanager, taskmanager, provider-sim, client [CMD ...]"
    ;;
  *)
    run "$role" "$@"
    ;;
esac
