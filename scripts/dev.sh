#!/usr/bin/env bash
# Run the whole pipeline on this machine without Docker: Kafka, PostgreSQL,
# `kgb proxy`, the consumers `winni` and `metrics`, and the viewer `kgb web`.
# Ctrl-C stops them all.
#
#   scripts/dev.sh
#
# Kafka listens on 127.0.0.1:9092 (KGB_DEV_KAFKA_PORT), PostgreSQL on 127.0.0.1:55432
# (KGB_DEV_POSTGRES_PORT; not 5432, so a system PostgreSQL can keep its port).
# Their data and logs live in ./.run/ (KGB_DEV_DIR) and survive restarts; delete
# the directory to start from nothing. Other KGB_* settings pass through to kgb.
# On a fresh machine it first installs what is missing (scripts/setup.sh: Java,
# Maven, PostgreSQL, the venv, the Kafka jars), as .ci/run does.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
(cd "$REPO" && source scripts/setup.sh && setup_machine)
RUN_DIR=${KGB_DEV_DIR:-$REPO/.run}
KAFKA_PORT=${KGB_DEV_KAFKA_PORT:-9092}
POSTGRES_PORT=${KGB_DEV_POSTGRES_PORT:-55432}
KGB=$REPO/.venv/bin/kgb

export KGB_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export KGB_DATABASE_URL=postgresql://postgres@127.0.0.1:$POSTGRES_PORT/winni
export KGB_SPOOL_DIR=${KGB_SPOOL_DIR:-$RUN_DIR/spool}

pids=()

stop_all() {
  trap - EXIT INT TERM
  echo "dev.sh: stopping"
  ((${#pids[@]})) && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
  python3 "$REPO/scripts/kafka.py" stop "$RUN_DIR/kafka" || true
  "$REPO/scripts/postgres.sh" stop "$RUN_DIR/postgres" || true
}

start_services() {
  mkdir -p "$RUN_DIR" "$KGB_SPOOL_DIR"
  # Whatever an earlier run that was killed hard left behind.
  python3 "$REPO/scripts/kafka.py" stop "$RUN_DIR/kafka"
  "$REPO/scripts/postgres.sh" stop "$RUN_DIR/postgres"
  python3 "$REPO/scripts/kafka.py" start "$RUN_DIR/kafka" "$KAFKA_PORT" --no-auto-create
  "$REPO/scripts/postgres.sh" start "$RUN_DIR/postgres" "$POSTGRES_PORT"
}

start_kgb() {
  # Background jobs of a script ignore SIGINT; stop_all ends them with SIGTERM,
  # which lets the proxy flush or spool what it holds.
  "$KGB" proxy & pids+=($!)
  "$KGB" consume winni & pids+=($!)
  "$KGB" consume metrics & pids+=($!)
  "$KGB" web & pids+=($!)
}

trap stop_all EXIT
trap 'exit 130' INT TERM
start_services
start_kgb
cat <<EOF

KGB is running. Point Claude Code (or any Anthropic SDK) at it:

  export ANTHROPIC_BASE_URL=http://127.0.0.1:${KGB_PROXY_PORT:-8089}

Browse what it captured: http://${KGB_WEB_HOST:-127.0.0.1}:${KGB_WEB_PORT:-8090}/
Query it:                psql $KGB_DATABASE_URL
Logs of Kafka and PostgreSQL: $RUN_DIR/kafka/kafka.log, $RUN_DIR/postgres/postgres.log
Press Ctrl-C to stop everything.
EOF
# Either kgb process ending on its own ends the session; its output above says why.
wait -n "${pids[@]}" || true
echo "dev.sh: a kgb process exited; shutting down" >&2
exit 1
