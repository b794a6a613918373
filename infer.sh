#!/usr/bin/env bash
# Predict and visualise: bash infer.sh --config CFG --checkpoint CKPT
#   (--rgb FILE --depth FILE | --input-dir DIR | --split test) --output-dir OUT [utils/infer.py flags]
#   ONNX Runtime instead of Jittor: --backend onnx --onnx model.onnx (from utils/export_onnx.py)
set -euo pipefail
cd "$(dirname "$0")"
source utils/env.sh
exec python utils/infer.py "$@"
