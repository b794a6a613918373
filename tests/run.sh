#!/usr/bin/env bash
# The test command: bash tests/run.sh [pytest args]. Installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mpirun >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing OpenMPI for the multi-process test ..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev) >/dev/null
fi
source utils/env.sh
# The whole suite unless the arguments name test files or folders.
paths=tests
for arg in "$@"; do case "$arg" in tests/*) paths= ;; esac; done
exec python -m pytest -q --durations=25 $paths "$@"
