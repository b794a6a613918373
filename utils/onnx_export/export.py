"""Export a DFormer / DFormerv2 segmentor to ONNX, built from the model's own modules and weights.

Why not tracing: Jittor has no ONNX export and its lazy graphs cannot be traced into one, so each
module class has an ONNX rule (its `onnx` method beside `execute`; Jittor's own layers in
`handlers.JITTOR_RULES`) that writes the same computation with `GraphBuilder` (`graph.py`). A module
without one stops the export with an error naming it. Differences from the Jittor forward, all exact
up to rounding:
- a BatchNorm right after a convolution is folded into that convolution's weight and bias (a
  BatchNorm before a padded convolution, as in DFormer's downsampling, is kept: folding it would
  change the zero padding);
- NMF bases are a fixed initializer `decode_head.hamburger.ham.raw_bases` (S, D, R), drawn with
  `numpy.random.default_rng(nmf_seed).random` (seed `C.seed` by default, the first draw of
  `utils.engine.evaluate`); the ONNX output equals the Jittor model with
  `model.decode_head.hamburger.ham.fixed_raw_bases = jittor_bases(raw_bases, batch)`.
"""
import numpy as np

from .graph import DEFAULT_OPSET, GraphBuilder


def jittor_bases(raw_bases, batch):
    """The `NMF2D.fixed_raw_bases` (B*S, D, R) under which Jittor computes what the ONNX file does."""
    return np.tile(raw_bases, (batch, 1, 1))


def export_model(model, height=480, width=640, dynamic=False, opset=DEFAULT_OPSET, nmf_seed=12345, batch=1):
    """The ONNX ModelProto of the Jittor segmentor `model` (switched to evaluation mode): inputs
    (batch, 3, height, width), or free axes with `dynamic`."""
    import onnx

    from .handlers import Exporter

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

    from .backend import create_session
    from .handlers import nmf_raw_bases

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
