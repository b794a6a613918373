"""Constant tensors of the forward (interpolation and pooling matrices, position grids), built once
per shape and dtype and then reused: a forward that builds them again costs Python time and graph
ops on the host for nothing (a numpy loop, a copy and an op each time).

`constant(key, dtype, build)` holds each one in a process-wide table keyed by everything it depends on
(shape and dtype); they depend on no parameter, so a loaded checkpoint never makes one stale. They
live outside every module, so they never enter a `state_dict` or the parameter list.
"""
import collections
import functools
import math

import jittor as jt
import numpy as np

MAX_CONSTANTS = 256  # least recently used first out: many input sizes (multi-scale evaluation) stay bounded
_TABLE = collections.OrderedDict()


def constant(key, dtype, build):
    """`build()` (a numpy array) as a Var of `dtype` without gradient, made the first time
    (key, dtype) is asked for; the same Var after that."""
    full_key = (*key, str(dtype))
    var = _TABLE.get(full_key)
    if var is None:
        _BUILT[0] += 1
        var = _TABLE[full_key] = jt.array(np.ascontiguousarray(build())).cast(dtype).stop_grad()
        while len(_TABLE) > MAX_CONSTANTS:
            _TABLE.popitem(last=False)
    else:
        _TABLE.move_to_end(full_key)
    return var


def built():
    """How many constants this process has built so far (the tests check reuse with it)."""
    return _BUILT[0]


_BUILT = [0]


@functools.lru_cache(maxsize=None)
def bilinear_matrix(size, out):
    """(out, size) weights of PyTorch's bilinear resize, align_corners=False, in float32 like it:
    source = max((i + 0.5) * size/out - 0.5, 0), split between floor(source) and the next pixel."""
    matrix = np.zeros((out, size), dtype=np.float32)
    scale = np.float32(size) / np.float32(out)
    for i in range(out):
        source = max(scale * np.float32(i + 0.5) - np.float32(0.5), np.float32(0))
        low = int(source)
        high = low + 1 if low < size - 1 else low
        weight = np.float32(source - low)
        matrix[i, low] += np.float32(1) - weight
        matrix[i, high] += weight
    return matrix


@functools.lru_cache(maxsize=None)
def adaptive_pool_matrix(size, out):
    """(out, size) averaging matrix with PyTorch's bins [floor(i*size/out), ceil((i+1)*size/out))."""
    matrix = np.zeros((out, size), dtype=np.float32)
    for i in range(out):
        start, end = (i * size) // out, math.ceil((i + 1) * size / out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def matrix(kind, size, out, dtype, batch=None, transposed=False):
    """A `bilinear` or `pool` (out, size) matrix as a Var of `dtype`; `transposed`: (size, out);
    with `batch`, repeated along a new first axis (batch, ...), as batched products need."""
    def build():
        values = (bilinear_matrix if kind == "bilinear" else adaptive_pool_matrix)(size, out)
        values = values.T if transposed else values
        return values if batch is None else np.broadcast_to(values, (batch, *values.shape))
    return constant((kind, size, out, batch, transposed), dtype, build)


def grid_matrix(kind, size, out, dtype, batch):
    """(batch, out_h*out_w, h*w) matrix of a `bilinear` or `pool` map of an (h, w) grid to
    (out_h, out_w) (`size` = (h, w), `out` = (out_h, out_w)), row-major positions: the Kronecker
    product of the per-axis matrices, so that one product maps a (B, h*w, C) tensor."""
    def build():
        per_axis = bilinear_matrix if kind == "bilinear" else adaptive_pool_matrix
        grid = np.kron(per_axis(size[0], out[0]), per_axis(size[1], out[1]))
        return np.broadcast_to(grid, (batch, *grid.shape))
    return constant((f"{kind}_grid", tuple(size), tuple(out), batch), dtype, build)


def filled(value, shape, dtype):
    """A Var of `shape` filled with `value`: for an op with a small tensor, where even the
    broadcast of a (1,) `scalar` would be one more op (LayerNorm's eps, per position)."""
    return constant(("filled", float(value), tuple(shape)), dtype, lambda: np.full(tuple(shape), value, np.float64))


def grid_distances(H, W, dtype):
    """(HW, HW) Manhattan distances between the positions of an H x W grid, row-major."""
    def build():
        rows, cols = np.divmod(np.arange(H * W, dtype=np.float32), W)
        return np.abs(rows[:, None] - rows[None]) + np.abs(cols[:, None] - cols[None])
    return constant(("grid_distances", H, W), dtype, build)


def line_distances(length, dtype):
    """(L, L) distances |i - j| between the positions of a line."""
    def build():
        index = np.arange(length, dtype=np.float32)
        return np.abs(index[:, None] - index[None])
    return constant(("line_distances", length), dtype, build)


def positions(length, dtype):
    """(L, 1) positions 0 .. L-1."""
    return constant(("positions", length), dtype, lambda: np.arange(length, dtype=np.float32)[:, None])


def scalar_like(value, x):
    """`scalar(value, x.dtype)` broadcast to `x`'s shape: a binary op between `x` and a (1,) Var
    broadcasts it too, at about twice the Python time."""
    return scalar(value, x.dtype).broadcast(x)


def scalar(value, dtype):
    """`value` as a (1,) Var of `dtype`: a Python number in an op costs a graph op of its own in
    every forward, this one is built once (the value is rounded to `dtype` the same way)."""
    return constant(("scalar", float(value)), dtype, lambda: np.array([value], dtype=np.float64))
