#!/usr/bin/env bash
# Train: bash train.sh --config local_configs.NYUDepthv2.DFormer_Large [utils/train.py flags]
# Several processes (GPUs) with Jittor's MPI: NPROC=2 bash train.sh --config ...
#   (C.batch_size stays the global batch, as upstream).
# No arguments: the built-in demo on synthetic data (generate, train, evaluate, infer).
set -euo pipefail
cd "$(dirname "$0")"
source utils/env.sh
if [ $# -gt 0 ]; then
  if [ -n "${NPROC:-}" ]; then
    exec mpirun -np "$NPROC" $( [ "$(id -u)" = 0 ] && echo --allow-run-as-root ) python utils/train.py "$@"
  fi
  exec python utils/train.py "$@"
fi
CONFIG=local_configs.Synthetic.DFormer_Tiny
RUN=checkpoints/Synthetic_DFormer-Tiny
python -m utils.synthetic --config "$CONFIG"
python utils/train.py --config "$CONFIG" --run-dir "$RUN"
python utils/eval.py --config "$CONFIG" --checkpoint "$RUN/last.pkl"
python utils/infer.py --config "$CONFIG" --checkpoint "$RUN/last.pkl" --split test --output-dir output/Synthetic_DFormer-Tiny
