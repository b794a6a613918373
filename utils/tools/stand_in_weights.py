"""Deterministic stand-in weights for the parity tests and the GPU check.

Both the fixture run of the official PyTorch model and the Jittor tests build every state_dict
entry from its key and shape with this one formula, so no weight file enters the repository.
Values are scaled so that activations stay O(1) through the deepest model.
"""
import zlib

import numpy as np


def synthetic_tensor(key, shape):
    """The stand-in value of one state_dict entry (float32 numpy array)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    uniform = rng.random(shape, dtype=np.float32)
    name = key.rsplit(".", 1)[-1]
    if name == "running_var":
        return 0.5 + uniform
    if name == "running_mean":
        return 0.2 * (uniform - 0.5)
    if name == "angle":  # rotary frequencies in (0, 1]
        return np.sort(uniform)[::-1].copy()
    if name == "decay":  # log-decays, negative
        return -0.02 - 0.3 * uniform
    if key.endswith("Geo.weight"):
        return 0.5 + uniform
    if "layer_scale" in name or name.startswith("gamma"):
        return 0.2 + 0.8 * uniform
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        # a float32 divisor: numpy 1 and 2 (NEP 50) then give the same bits
        return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
    if name == "weight":  # norm scales
        return 1.0 + 0.4 * (uniform - 0.5)
    return 0.2 * (uniform - 0.5)  # biases


def synthetic_state_dict(entries):
    """{key: array} for [(key, shape), ...], skipping BN's integer `num_batches_tracked`."""
    return {key: synthetic_tensor(key, tuple(shape)) for key, shape in entries
            if not key.endswith("num_batches_tracked")}


def synthetic_inputs(batch, height, width, seed):
    """Normalised-looking rgb (B,3,H,W), 3 identical depth channels and raw NMF bases (B,512,64)."""
    rng = np.random.default_rng(seed)
    rgb = rng.standard_normal((batch, 3, height, width), dtype=np.float32)
    depth = np.repeat(rng.standard_normal((batch, 1, height, width), dtype=np.float32), 3, axis=1)
    raw_bases = rng.random((batch, 512, 64), dtype=np.float32)
    return rgb, depth, raw_bases
