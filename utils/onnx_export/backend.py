"""Run an exported ONNX segmentor (`utils/export_onnx.py`) in ONNX Runtime on the CPU.

`OnnxSegmentor` is called like the Jittor model, `model(rgb, depth)` on Jittor arrays, so
`utils.engine.evaluate` (and through it `utils/infer.py`) runs it with the same pre- and
post-processing. `onnx` and `onnxruntime` are needed only here and by the exporter.
"""
import os

import numpy as np

from utils.errors import UserError

INSTALL_HINT = "pip install -r requirements.txt (onnx and onnxruntime are pinned there)"


def require_onnx():
    """Import check for `onnx` and `onnxruntime`, as one clear error."""
    for package in ("onnx", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            raise UserError(f"the ONNX export and backend need the package {package!r}: {INSTALL_HINT}") from None


def create_session(model, threads=None):
    """An ONNX Runtime CPU session of `model` (a path or serialized bytes), all graph optimisations,
    `threads` intra-op threads (default: one per CPU core, like Jittor's OpenMP)."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001  (ONNX Runtime raises its own, unexported types)
        where = model if isinstance(model, str) else "the ONNX model"
        raise UserError(f"ONNX Runtime cannot load {where}: {str(error).splitlines()[0]}") from None


class OnnxSegmentor:
    """`model(rgb, depth)` -> logits for an exported file, on Jittor arrays in and out.

    The NMF bases are fixed inside the file, so, unlike the Jittor model under `utils.engine.evaluate`,
    every forward uses the same bases (the first ones evaluation draws, for batch 1).
    """

    def __init__(self, path, num_classes=None, threads=None):
        if not os.path.isfile(path):
            raise UserError(f"ONNX model not found: {path}")
        self.path = path
        self.session = create_session(path, threads)
        names = sorted(i.name for i in self.session.get_inputs())
        outputs = [o.name for o in self.session.get_outputs()]
        if names != ["depth", "rgb"] or outputs != ["logits"]:
            raise UserError(f"{path}: expected inputs rgb, depth and output logits (a file of "
                            f"utils/export_onnx.py), found inputs {names} and outputs {outputs}")
        self.input_shape = self.session.get_inputs()[0].shape  # ints, or names for dynamic axes
        classes = self.session.get_outputs()[0].shape[1]
        if num_classes is not None and isinstance(classes, int) and classes != num_classes:
            raise UserError(f"{path} predicts {classes} classes but the config has {num_classes}: "
                            "export it from a checkpoint of this config")

    def eval(self):
        return self

    def check_shape(self, shape):
        fixed = [(want, got) for want, got in zip(self.input_shape, shape) if isinstance(want, int)]
        if any(want != got for want, got in fixed):
            want = "x".join(str(d) for d in self.input_shape)
            raise UserError(f"{self.path} was exported for inputs {want}, this forward has "
                            f"{'x'.join(map(str, shape))}: export with --dynamic (needed for msf and "
                            "sliding modes and for images of other sizes) or with this --height/--width")

    def __call__(self, rgb, depth):
        import jittor as jt

        rgb, depth = (np.ascontiguousarray(x.numpy(), dtype=np.float32) for x in (rgb, depth))
        self.check_shape(rgb.shape)
        return jt.array(self.session.run(["logits"], {"rgb": rgb, "depth": depth})[0])
