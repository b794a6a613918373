#!/usr/bin/env bash
# Evaluate: bash eval.sh --config CFG --checkpoint CKPT [--mode ss|msf|sliding] [utils/eval.py flags]
# Several processes: NPROC=2 bash eval.sh ...
set -euo pipefail
cd "$(dirname "$0")"
source utils/env.sh
if [ -n "${NPROC:-}" ]; then
  exec mpirun -np "$NPROC" $( [ "$(id -u)" = 0 ] && echo --allow-run-as-root ) python utils/eval.py "$@"
fi
exec python utils/eval.py "$@"
