"""Export a DFormer / DFormerv2 segmentor to ONNX, built from the model's own modules and weights.

    python utils/export_onnx.py --config local_configs.NYUDepthv2.DFormer_Large \
        --checkpoint checkpoints/trained/NYUv2_DFormer_Large.pth --output dformer_large.onnx
    python utils/export_onnx.py --config CFG --checkpoint CKPT --output model.onnx --dynamic --verify

The file has inputs `rgb` and `depth`, float32 (B, 3, H, W), normalised exactly as for
`model(rgb, depth)`, and the output `logits` (B, K, H, W). Without `--dynamic` B=1 and H, W are
`--height`/`--width`; with it, batch, height and width are free.

Why not tracing: Jittor has no ONNX export and its lazy graphs cannot be traced into one, so each
module type has a handler (`HANDLERS` in `utils/onnx_export/layers.py`, the one registry; the model's
handlers in `utils/onnx_export/handlers.py`) that writes the same computation with `GraphBuilder`
(`utils/onnx_export/graph.py`). A module without a handler stops the export with an error naming it.
Differences from the Jittor forward, all exact up to rounding:
- a BatchNorm right after a convolution is folded into that convolution's weight and bias (a
  BatchNorm before a padded convolution, as in DFormer's downsampling, is kept: folding it would
  change the zero padding);
- NMF bases are a fixed initializer `decode_head.hamburger.ham.raw_bases` (S, D, R), drawn with
  `numpy.random.default_rng(nmf_seed).random` (seed `C.seed` by default, the first draw of
  `utils.engine.evaluate`); the ONNX output equals the Jittor model with
  `model.decode_head.hamburger.ham.fixed_raw_bases = jittor_bases(raw_bases, batch)`.
"""
import argparse
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as `python utils/export_onnx.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.entry import load_config, load_model, main_guard  # noqa: E402  (Jittor defaults first)
from utils.onnx_export.graph import DEFAULT_OPSET, ExportError, GraphBuilder  # noqa: E402


def jittor_bases(raw_bases, batch):
    """The `NMF2D.fixed_raw_bases` (B*S, D, R) under which Jittor computes what the ONNX file does."""
    return np.tile(raw_bases, (batch, 1, 1))


def export_model(model, height=480, width=640, dynamic=False, opset=DEFAULT_OPSET, nmf_seed=12345, batch=1):
    """The ONNX ModelProto of the Jittor segmentor `model` (switched to evaluation mode): inputs
    (batch, 3, height, width), or free axes with `dynamic`."""
    import onnx

    from utils.onnx_export.handlers import Exporter

    model.eval()
    graph = GraphBuilder(opset)
    exporter = Exporter(model, graph, nmf_seed)
    exporter.names[id(model)] = ""
    logits = exporter(model, "rgb", "depth")
    graph.nodes.append(onnx.helper.make_node("Identity", [logits], ["logits"], name="logits"))
    num_classes = model.decode_head.conv_seg.out_channels if hasattr(model.decode_head, "conv_seg") \
        else model.decode_head.linear_pred.out_channels
    batch, h, w = ("batch", "height", "width") if dynamic else (batch, height, width)
    doc = (f"{getattr(model, 'backbone_name', type(model).__name__)} segmentor exported from Jittor: "
           f"rgb, depth (B, 3, H, W) normalised as for model(rgb, depth) -> logits (B, K, H, W); "
           f"BatchNorm after convolutions folded; NMF raw bases fixed (seed {nmf_seed}).")
    proto = graph.build([("rgb", [batch, 3, h, w]), ("depth", [batch, 3, h, w])],
                        [("logits", [batch, num_classes, h, w])], name="dformer", doc=doc)
    onnx.checker.check_model(proto)
    return proto


def compare_with_jittor(model, proto, rgb, depth, nmf_seed, session=None):
    """max |ONNX Runtime - Jittor| of the logits for numpy inputs, Jittor using the same bases."""
    import jittor as jt

    from utils.onnx_export.backend import create_session
    from utils.onnx_export.handlers import nmf_raw_bases

    session = session or create_session(proto.SerializeToString())
    nmf = getattr(getattr(model.decode_head, "hamburger", None), "ham", None)
    if nmf is not None:
        nmf.fixed_raw_bases = jittor_bases(nmf_raw_bases(nmf, nmf_seed), rgb.shape[0])
    try:
        with jt.no_grad():
            expected = model(jt.array(rgb), jt.array(depth)).numpy()
    finally:
        if nmf is not None:
            nmf.fixed_raw_bases = None
    got = session.run(["logits"], {"rgb": rgb, "depth": depth})[0]
    if got.shape != expected.shape:
        raise AssertionError(f"ONNX logits {got.shape} vs Jittor {expected.shape}")
    return float(np.abs(got - expected).max())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config module, e.g. local_configs.NYUDepthv2.DFormer_Large")
    parser.add_argument("--checkpoint", required=True, help="official .pth or a checkpoint of utils/train.py")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--height", type=int, default=480, help="input height of a fixed-size export")
    parser.add_argument("--width", type=int, default=640, help="input width of a fixed-size export")
    parser.add_argument("--dynamic", action="store_true", help="free batch, height and width axes")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--nmf-seed", type=int, help="seed of the fixed NMF bases (default: the config's seed)")
    parser.add_argument("--verify", action="store_true",
                        help="run the file in ONNX Runtime and the Jittor model on one random input and "
                             "print max |diff|")
    return parser.parse_args(argv)


def main(args):
    from utils.onnx_export.backend import require_onnx

    require_onnx()
    if args.height < 32 or args.width < 32:
        raise ExportError("--height and --width must be at least 32 (the encoders downsample 32x)")
    GraphBuilder(args.opset)  # an unusable opset fails before the weights are loaded
    C = load_config(args.config)
    seed = C.seed if args.nmf_seed is None else args.nmf_seed
    model = load_model(C, args.checkpoint)
    start = time.time()
    proto = export_model(model, args.height, args.width, args.dynamic, args.opset, seed)
    folder = os.path.dirname(os.path.abspath(args.output))
    partial = args.output + ".partial"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(partial, "wb") as file:
            file.write(proto.SerializeToString())
        os.replace(partial, args.output)  # never a truncated file under the final name
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
