#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and local runs.
#
#   scripts/postgres.sh start DIR PORT   # cluster in DIR/data, 127.0.0.1:PORT, database `winni`
#   scripts/postgres.sh stop DIR
#
# Trust auth on 127.0.0.1 only, fsync off: the data is disposable, speed matters.
# Stopping and starting again on the same DIR keeps the data.
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres`
# user, and DIR must be reachable by that user (not under a 0700 root directory).
# Debian's postgresql is installed with apt when no server binaries are found.
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

# Newest installed major version, e.g. /usr/lib/postgresql/15/bin.
find_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

ensure_bindir() {
  local bindir
  bindir=$(find_bindir)
  if [[ -z "$bindir" ]]; then
    echo "postgres.sh: no PostgreSQL server found; installing Debian's postgresql" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bindir=$(find_bindir)
  fi
  [[ -n "$bindir" ]] || die "PostgreSQL server binaries still missing after apt-get install"
  echo "$bindir"
}

# As root, run as `postgres`; as anyone else, run as yourself.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

log_tail() { tail -n 40 "$1/postgres.log" 2>/dev/null || echo "(no $1/postgres.log)"; }

init_cluster() {
  local bindir=$1 dir=$2 port=$3
  [[ -f "$dir/data/PG_VERSION" ]] && return 0
  as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 \
    || die "initdb failed:$(printf '\n')$(cat "$dir/initdb.log")"
  cat >>"$dir/data/postgresql.conf" <<EOF
# scripts/postgres.sh: a disposable cluster for tests and local runs
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

create_winni() {
  local bindir=$1 dir=$2 port=$3
  local exists
  exists=$(as_owner "$bindir/psql" -h "$dir" -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'winni'")
  [[ "$exists" == 1 ]] || as_owner "$bindir/createdb" -h "$dir" -p "$port" -U postgres winni
}

cmd_start() {
  local dir port bindir
  [[ $# -eq 2 ]] || die "usage: postgres.sh start DIR PORT"
  mkdir -p "$1"
  dir=$(cd "$1" && pwd) port=$2
  bindir=$(ensure_bindir)
  [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
  as_owner test -w "$dir" || die "$dir is not writable by the postgres user (is a parent directory 0700?)"
  if as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    die "already running from $dir"
  fi
  init_cluster "$bindir" "$dir" "$port"
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null \
    || die "pg_ctl start failed; $dir/postgres.log:$(printf '\n')$(log_tail "$dir")"
  create_winni "$bindir" "$dir" "$port"
  echo "postgres ready on 127.0.0.1:$port (data and postgres.log in $dir)"
}

cmd_stop() {
  local dir bindir
  [[ $# -eq 1 ]] || die "usage: postgres.sh stop DIR"
  [[ -f "$1/data/PG_VERSION" ]] || return 0
  dir=$(cd "$1" && pwd)
  bindir=$(ensure_bindir)
  if as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  fi
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) die "usage: postgres.sh start DIR PORT | stop DIR" ;;
esac
