#!/usr/bin/env bash
# Run a command once a process has exited:
#
#   scripts/after-exit.sh PID CMD [ARG...]
#
# The test fixtures start one per service, so that a pytest killed before its
# teardown (a timeout, kill -9) does not leave a broker or a cluster running.
# A zombie counts as exited: in some containers nothing reaps orphans promptly.
set -euo pipefail

pid=$1
shift
alive() { [[ -r /proc/$pid/stat ]] && [[ $(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1) != Z ]]; }
while alive; do sleep 1; done
exec "$@"
