"""Multi-threaded CPU kernels with their own backward passes, and the one predicate that decides
where they run.

`ops.py`: channels-last convolutions, batched oneDNN products, GELU, LayerNorm, the AdamW update;
`attention.py`: fused attention; `float64.py`: the training loss and train-mode BatchNorm with
float64 sums; `layers.py`: the CPU versions of `models/layers.py`'s blocks, built on these. Jittor
on the CPU runs element-wise ops, reductions and batched products as single-threaded loops; these
kernels compute the same maths with OpenMP. `enabled()` / `applies(x)` below is the one decision
behind every CPU-only path (these kernels and the layout choices of `models/layers.py`,
`layout.py` and the decoders, the loss and the optimiser); every caller uses it.
"""
import contextlib
import os

import jittor as jt

from .. import precision

SWITCH = "DFORMER_CPU_KERNELS"  # "0" in the environment: the CPU runs the op graph a GPU runs
switched_on = os.environ.get(SWITCH, "1") != "0"  # read once, at import (`enabled` runs ~500 times a forward)


def enabled():
    """Whether the CPU fast path is on: Jittor runs on the CPU, DFORMER_CPU_KERNELS is not "0" and
    no autocast is on (the kernels are float32; mixed precision runs the GPU's ops).

    With the switch at "0" (or inside `gpu_ops()`) the CPU takes the GPU's ops instead
    (tests/test_gpu_graph.py runs the models so).
    """
    return switched_on and not jt.flags.use_cuda and not precision.autocast_enabled()


@contextlib.contextmanager
def gpu_ops():
    """Inside: the CPU takes the GPU's ops, as with DFORMER_CPU_KERNELS=0."""
    global switched_on
    saved, switched_on = switched_on, False
    try:
        yield
    finally:
        switched_on = saved


def applies(x):
    """`enabled()` for a tensor `x`: the kernels are float32 only."""
    return enabled() and x.dtype == "float32"


def onednn_available():
    """Whether this Jittor was built with oneDNN (`use_mkl`), which `ops.conv_nhwc` and
    `ops.batched_matmul` call."""
    return getattr(jt, "mkl_ops", None) is not None


def applies_with_onednn(x):
    """`applies(x)` for the kernels that call oneDNN (`ops.conv_nhwc`, `ops.batched_matmul`)."""
    return applies(x) and onednn_available()
