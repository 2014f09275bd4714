#!/usr/bin/env bash
# Run the whole pipeline on this machine without Docker: Kafka, PostgreSQL,
# `kgb proxy`, the consumers `winni` and `metrics`, and the viewer `kgb web`.
#
#   scripts/dev.sh
#
# Kafka listens on 127.0.0.1:9092 (KGB_DEV_KAFKA_PORT), PostgreSQL on 127.0.0.1:55432
# (KGB_DEV_POSTGRES_PORT; not 5432, so a system PostgreSQL can keep its port).
# Their data and logs live in ./.run/ (KGB_DEV_DIR) and survive restarts; delete
# the directory to start from nothing. Other KGB_* settings pass through to kgb.
# On a fresh machine it first installs what is missing (scripts/setup.sh: Java,
# Maven, PostgreSQL, the venv, the Kafka jars), as .ci/run does; the project is
# reinstalled only when pyproject.toml changed.
#
# One run per directory: a second start in the same KGB_DEV_DIR says so and
# exits, leaving the first alone. The banner comes once every service answers
# (the proxy's and the metrics port's /ready, the viewer's /health, winni's
# tables). Kafka, PostgreSQL and the kgb processes are watched: one that dies
# stops everything, saying which. Ctrl-C (under `| tee` too), SIGTERM and
# SIGHUP all stop everything cleanly: the kgb processes first (the proxy
# flushes or spools what it holds), then Kafka and PostgreSQL.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=${KGB_DEV_DIR:-$REPO/.run}
KAFKA_PORT=${KGB_DEV_KAFKA_PORT:-9092}
POSTGRES_PORT=${KGB_DEV_POSTGRES_PORT:-55432}
KGB=$REPO/.venv/bin/kgb
READY_TIMEOUT=180  # seconds for every service to answer

say() { echo "dev.sh: $*" >&2; }

# The lock is held for as long as this script runs, by an fd no child keeps
# (each is started with 9>&-), so a run killed outright frees it.
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
exec 9>"$RUN_DIR/dev.lock"
if ! flock -n 9; then
  say "already running from $RUN_DIR (pid $(cat "$RUN_DIR/dev.pid" 2>/dev/null || echo unknown)); stop it first, or give this one its own KGB_DEV_DIR and ports"
  exit 1
fi
echo $$ >"$RUN_DIR/dev.pid"

(cd "$REPO" && source scripts/setup.sh && setup_machine) 9>&-

export KGB_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export KGB_DATABASE_URL=postgresql://postgres@127.0.0.1:$POSTGRES_PORT/winni
export KGB_SPOOL_DIR=${KGB_SPOOL_DIR:-$RUN_DIR/spool}
# psql with the KGB schemas on its search_path, so the README's queries run as pasted.
PSQL_URL="$KGB_DATABASE_URL?options=-csearch_path%3D${KGB_DB_SCHEMA:-kgb},${KGB_METRICS_SCHEMA:-kgb_metrics}"
PROXY=http://127.0.0.1:${KGB_PROXY_PORT:-8089}
METRICS=http://127.0.0.1:${KGB_METRICS_PORT:-9464}
WEB=http://${KGB_WEB_HOST:-127.0.0.1}:${KGB_WEB_PORT:-8090}

declare -A pids=()  # name -> pid of each kgb process

stop_all() {
  local code=$?
  # Under `| tee`, Ctrl-C ends tee too: a write to the closed pipe must not end the cleanup.
  trap '' INT TERM HUP PIPE
  trap - EXIT
  set +e
  say "stopping"
  ((${#pids[@]})) && kill -TERM "${pids[@]}" 2>/dev/null
  wait
  python3 "$REPO/scripts/kafka.py" stop "$RUN_DIR/kafka"
  "$REPO/scripts/postgres.sh" stop "$RUN_DIR/postgres"
  say "stopped"
  exit "$code"
}

# Alive and not a zombie (an exited child not yet reaped is one).
alive() { [[ -r /proc/$1/stat ]] && [[ $(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1) != Z ]]; }
kafka_pid() { cat "$RUN_DIR/kafka/kafka.pid" 2>/dev/null; }
postgres_pid() { head -1 "$RUN_DIR/postgres/data/postmaster.pid" 2>/dev/null; }

# Every service still up, else which one is not (and the end of its log).
check_all() {
  local name pid
  pid=$(kafka_pid)
  if [[ -z $pid ]] || ! alive "$pid"; then
    say "Kafka exited; the end of $RUN_DIR/kafka/kafka.log:"; tail -n 5 "$RUN_DIR/kafka/kafka.log" >&2; return 1
  fi
  pid=$(postgres_pid)
  if [[ -z $pid ]] || ! alive "$pid"; then
    say "PostgreSQL exited; the end of $RUN_DIR/postgres/postgres.log:"; tail -n 5 "$RUN_DIR/postgres/postgres.log" >&2; return 1
  fi
  for name in "${!pids[@]}"; do
    if ! alive "${pids[$name]}"; then say "kgb $name exited (its output above says why)"; return 1; fi
  done
}

start_services() {
  mkdir -p "$KGB_SPOOL_DIR"
  # Whatever an earlier run that was killed hard left behind (the lock says no run owns it now).
  python3 "$REPO/scripts/kafka.py" stop "$RUN_DIR/kafka"
  "$REPO/scripts/postgres.sh" stop "$RUN_DIR/postgres"
  python3 "$REPO/scripts/kafka.py" start "$RUN_DIR/kafka" "$KAFKA_PORT" --no-auto-create 9>&-
  "$REPO/scripts/postgres.sh" start "$RUN_DIR/postgres" "$POSTGRES_PORT" 9>&-
}

start_kgb() {
  # Background jobs of a script ignore SIGINT; stop_all ends them with SIGTERM,
  # which lets the proxy flush or spool what it holds.
  "$KGB" proxy 9>&- & pids[proxy]=$!
  "$KGB" consume winni 9>&- & pids[winni]=$!
  "$KGB" consume metrics 9>&- & pids[metrics]=$!
  "$KGB" web 9>&- & pids[web]=$!
}

http_ok() { curl -sf -o /dev/null --max-time 2 "$1"; }
winni_migrated() {
  [[ $(psql "$PSQL_URL" -tAc "SELECT 1 FROM ${KGB_DB_SCHEMA:-kgb}.schema_migrations LIMIT 1" 2>/dev/null) == 1 ]]
}

wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT)) what
  for what in "proxy:http_ok $PROXY/ready" "metrics:http_ok $METRICS/ready" "web:http_ok $WEB/health" "winni:winni_migrated"; do
    until ${what#*:}; do
      check_all || exit 1
      if ((SECONDS > deadline)); then
        say "kgb ${what%%:*} not ready after ${READY_TIMEOUT}s (${what#*:})"
        exit 1
      fi
      sleep 0.5
    done
  done
}

supervise() {
  while check_all; do sleep 1; done
  say "stopping everything"
  exit 1
}

trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
start_services
start_kgb
wait_ready
cat <<EOF

KGB is running. Point Claude Code (or any Anthropic SDK) at it:

  export ANTHROPIC_BASE_URL=$PROXY

For kgb usage, kgb replay and the other commands, in another shell:

  export KGB_DATABASE_URL=$KGB_DATABASE_URL
  export KGB_KAFKA_BOOTSTRAP=$KGB_KAFKA_BOOTSTRAP

Browse what it captured: $WEB/
Query it:                psql '$PSQL_URL'
Logs of Kafka and PostgreSQL: $RUN_DIR/kafka/kafka.log, $RUN_DIR/postgres/postgres.log
Press Ctrl-C to stop everything.
EOF
supervise
