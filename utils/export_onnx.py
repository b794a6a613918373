"""Export a DFormer / DFormerv2 segmentor to ONNX, built from the model's own modules and weights.

    python utils/export_onnx.py --config CFG --checkpoint CKPT --output model.onnx [--dynamic] [--verify]

Inputs `rgb`, `depth` float32 (B, 3, H, W), normalised as for `model(rgb, depth)`; output `logits`
(B, K, H, W); B=1, H=`--height`, W=`--width` unless `--dynamic`. How the graph differs from the
Jittor forward: `utils/onnx_export/export.py`.
"""
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a file, not with -m: see utils/entry.py
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from utils.entry import config_parser, load_config, load_model, main_guard  # noqa: E402  (Jittor defaults first)
from utils.files import atomic_open  # noqa: E402
from utils.onnx_export.graph import DEFAULT_OPSET, ExportError, GraphBuilder  # noqa: E402


def parse_args(argv=None):
    parser = config_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="official .pth or a checkpoint of utils/train.py")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--height", type=int, default=480, help="input height of a fixed-size export")
    parser.add_argument("--width", type=int, default=640, help="input width of a fixed-size export")
    parser.add_argument("--dynamic", action="store_true", help="free batch, height and width axes")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--nmf-seed", type=int, help="seed of the fixed NMF bases (default: the config's seed)")
    parser.add_argument("--verify", action="store_true", help="run the file in ONNX Runtime and the Jittor "
                        "model on one random input and print max |diff|")
    return parser.parse_args(argv)


def main(args):
    from utils.onnx_export.backend import require_onnx
    from utils.onnx_export.export import compare_with_jittor, export_model

    require_onnx()
    if args.height < 32 or args.width < 32:
        raise ExportError("--height and --width must be at least 32 (the encoders downsample 32x)")
    GraphBuilder(args.opset)  # an unusable opset fails before the weights are loaded
    C = load_config(args.config)
    seed = C.seed if args.nmf_seed is None else args.nmf_seed
    model = load_model(C, args.checkpoint)
    start = time.time()
    proto = export_model(model, args.height, args.width, args.dynamic, args.opset, seed)
    try:
        with atomic_open(args.output) as file:  # never a truncated file under the final name
            file.write(proto.SerializeToString())
    except OSError as error:
        raise ExportError(f"cannot write {args.output}: {error.strerror}") from None
    size = "batch x 3 x height x width (dynamic)" if args.dynamic else f"1 x 3 x {args.height} x {args.width}"
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB, opset {args.opset}, "
          f"{len(proto.graph.node)} nodes, {time.time() - start:.1f} s): inputs rgb, depth {size} -> "
          f"logits; NMF bases seed {seed}; onnx.checker passed")
    if args.verify:
        rng = np.random.default_rng(0)
        rgb, depth = (rng.standard_normal((1, 3, args.height, args.width), dtype=np.float32) for _ in "ab")
        error = compare_with_jittor(model, proto, rgb, depth, seed)
        print(f"verify at 1x3x{args.height}x{args.width}: max |ONNX Runtime - Jittor| = {error:.2e}")


if __name__ == "__main__":
    main_guard(lambda: main(parse_args()))
