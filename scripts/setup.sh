#!/usr/bin/env bash
# Machine setup shared by .ci/run and scripts/dev.sh, sourced by both: the
# system packages KGB needs (Python 3.11+ with venv, Java, Maven, PostgreSQL,
# Node for the Claude Code CLI, Chromium for kgb web's browser tests), the
# project's venv, and the Kafka jars.
# Installs only what is missing; downloads are cached under ~/.m2 and ~/.cache/kgb.

export DEBIAN_FRONTEND=noninteractive
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo
APT_UPDATED=0

step() { echo "== $*"; }

apt_install() {
  if ((!APT_UPDATED)); then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

ensure_python() {
  command -v python3 >/dev/null || apt_install python3
  python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
    || { echo "ci: KGB needs Python 3.11 or newer" >&2; exit 1; }
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
}

ensure_system_packages() {
  step "system packages"
  ensure_python
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || apt_install postgresql
  command -v npm >/dev/null || apt_install nodejs npm
  # Playwright drives Debian's build (tests/web/test_browser.py); it never downloads its own.
  command -v chromium >/dev/null || apt_install chromium
}

docker_usable() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

# The project is installed editable, so only pyproject.toml (dependencies, entry
# points) calls for a reinstall: its hash and the extras are kept beside the venv.
install_project() {
  step "virtualenv and the project"
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  local extras=$1 stamp=.venv/.kgb-installed wanted
  docker_usable && extras=$extras,docker  # the test fixtures then use testcontainers
  wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) [$extras]"
  if [[ -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
    echo "pyproject.toml unchanged since the last install: not reinstalling"
    return 0
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$wanted" >"$stamp"
}

fetch_kafka() {
  step "Kafka jars"
  python3 scripts/kafka.py fetch
}

setup_machine() {
  local extras=${1:-test}
  ensure_system_packages
  install_project "$extras"
  fetch_kafka
}
