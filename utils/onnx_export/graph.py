"""A small ONNX graph builder: nodes, initializers, and the composite ops the DFormer models need.

Used by the layers' ONNX rules (their `onnx` methods in `models/`, `JITTOR_RULES` in `handlers.py`);
it holds no model knowledge. Every composite writes out the same arithmetic as its Jittor counterpart in
`models/layers.py` (two-pass LayerNorm, erf GELU, PyTorch's adaptive-pool bins, bilinear
resize with align_corners=False) rather than a faster approximation.

Shapes that depend on the input size (resize targets, pooling bins, geometry tables) are
computed inside the graph from `Shape`, so one graph serves fixed and dynamic input sizes; ONNX
Runtime folds them into constants when the sizes are fixed.
"""
import numpy as np

from utils.errors import UserError

MIN_OPSET = 13  # Squeeze/Unsqueeze/Split take their axes as inputs, Softmax works on one axis
DEFAULT_OPSET = 17
# The first opset in which an op exists in the form emitted here (ops not listed: opset <= 13).
OP_SINCE = {"Squeeze": 13, "Unsqueeze": 13, "Softmax": 13, "ReduceMean": 13, "ReduceSum": 13, "Resize": 13}


class ExportError(UserError):
    """A model or option the exporter cannot turn into ONNX (reported as one `error:` line)."""


def max_opset():
    import onnx

    return onnx.defs.onnx_opset_version()


class GraphBuilder:
    """Collects nodes and initializers; `op` returns the name(s) of its output(s).

    `scope` (the name of the module being exported) prefixes node names, so a node in the saved
    graph says which module it came from, e.g. `backbone.stages.0.0.attn.q/MatMul_12`.
    """

    def __init__(self, opset=DEFAULT_OPSET):
        from onnx import TensorProto

        self.float_type = TensorProto.FLOAT
        if not MIN_OPSET <= opset <= max_opset():
            raise ExportError(f"opset {opset} is not supported: the exporter writes opsets {MIN_OPSET}-"
                              f"{max_opset()} (default {DEFAULT_OPSET}); {self._too_old_hint(opset)}")
        self.opset = opset
        self.nodes, self.initializers, self.scope = [], {}, ""
        self._count, self._constants = 0, {}

    @staticmethod
    def _too_old_hint(opset):
        needing = sorted(op for op, since in OP_SINCE.items() if since > opset)
        return f"ops that need a newer opset: {', '.join(needing)}" if needing else "choose one in range"

    # ------------------------------------------------------------------ primitives
    def op(self, op_type, *inputs, outputs=1, **attrs):
        from onnx import helper

        since = OP_SINCE.get(op_type, 1)
        if self.opset < since:
            raise ExportError(f"opset {self.opset} is too old for {op_type} (needs opset >= {since}, "
                              f"used by {self.scope or 'the model'}); export with --opset {since} or newer")
        self._count += 1
        name = f"{self.scope}/{op_type}_{self._count}" if self.scope else f"{op_type}_{self._count}"
        names = [f"{name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=name, **attrs))
        return names[0] if outputs == 1 else names

    def initializer(self, name, array):
        """A named weight (float32 unless integer)."""
        array = np.array(array, order="C")  # (np.ascontiguousarray would turn a scalar into shape (1,))
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        if name in self.initializers:
            raise ExportError(f"initializer {name} written twice")
        self.initializers[name] = array
        return name

    def const(self, value, dtype=np.float32):
        """An unnamed constant (shared between nodes asking for the same value)."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.initializer(f"const_{len(self._constants)}", array)
        return self._constants[key]

    def ints(self, values):
        return self.const(list(values), np.int64)

    # ------------------------------------------------------------------ shapes
    def reshape(self, x, shape):
        """Reshape with ONNX conventions: 0 copies the input's size, -1 is inferred."""
        return self.op("Reshape", x, self.ints(shape))

    def reshape_to(self, x, shape):
        """Reshape to the shape held by the int64 tensor `shape`."""
        return self.op("Reshape", x, shape)

    def transpose(self, x, perm):
        return self.op("Transpose", x, perm=list(perm))

    def nhwc_to_nchw(self, x):
        return self.transpose(x, (0, 3, 1, 2))

    def nchw_to_nhwc(self, x):
        return self.transpose(x, (0, 2, 3, 1))

    def dims(self, x, start, end):
        """x.shape[start:end] as an int64 tensor."""
        return self.op("Slice", self.op("Shape", x), self.ints([start]), self.ints([end]))

    def dim(self, x, axis):
        """x.shape[axis] as an int64 scalar."""
        return self.op("Squeeze", self.dims(x, axis, axis + 1), self.ints([0]))

    def take(self, x, axis, index):
        """x[..., index, ...] along `axis` (the axis removed)."""
        return self.op("Gather", x, self.const(index, np.int64), axis=axis)

    def slice(self, x, axis, start, end, step=1):
        return self.op("Slice", x, self.ints([start]), self.ints([end]), self.ints([axis]), self.ints([step]))

    def unsqueeze(self, x, axes):
        return self.op("Unsqueeze", x, self.ints(axes))

    def concat(self, xs, axis):
        return self.op("Concat", *xs, axis=axis)

    def arange(self, length):
        """float32 [0, 1, ..., length-1] for an int64 scalar `length`."""
        index = self.op("Range", self.const(0, np.int64), length, self.const(1, np.int64))
        return self.op("Cast", index, to=self.float_type)

    # ------------------------------------------------------------------ arithmetic
    def add(self, a, b):
        return self.op("Add", a, b)

    def sub(self, a, b):
        return self.op("Sub", a, b)

    def mul(self, a, b):
        return self.op("Mul", a, b)

    def div(self, a, b):
        return self.op("Div", a, b)

    def matmul(self, a, b):
        return self.op("MatMul", a, b)

    def scale(self, x, factor):
        """x * factor with `factor` rounded to float32, as Jittor multiplies by a Python float."""
        return self.mul(x, self.const(factor))

    def relu(self, x):
        return self.op("Relu", x)

    def gelu(self, x):
        """Exact (erf) GELU: x * 0.5 * (1 + erf(x / sqrt 2)), Jittor's `nn.gelu`."""
        erf = self.op("Erf", self.div(x, self.const(np.sqrt(2.0))))
        return self.mul(self.mul(x, self.const(0.5)), self.add(erf, self.const(1.0)))

    def softmax(self, x, axis=-1):
        return self.op("Softmax", x, axis=axis)

    def abs_diff(self, a, b):
        return self.op("Abs", self.sub(a, b))

    def reduce_mean(self, x, axes):
        if self.opset >= 18:  # axes became an input in opset 18
            return self.op("ReduceMean", x, self.ints(axes), keepdims=1)
        return self.op("ReduceMean", x, axes=list(axes), keepdims=1)

    def layer_norm(self, x, weight, bias, eps):
        """LayerNorm over the last axis with the two-pass variance of `models.layers.layer_norm`.

        Why not ONNX `LayerNormalization`: ONNX Runtime's CPU kernel uses E[x^2] - E[x]^2, the
        one-pass formula that loses digits on DFormer's large residual activations.
        """
        centred = self.sub(x, self.reduce_mean(x, [-1]))
        variance = self.reduce_mean(self.mul(centred, centred), [-1])
        normed = self.div(centred, self.op("Sqrt", self.add(variance, self.const(eps))))
        return self.add(self.mul(normed, weight), bias)

    def linear(self, x, weight, bias, name):
        """x @ weight^T + bias over the last axis; weight (out, in) as in the state_dict."""
        y = self.matmul(x, self.initializer(f"{name}.weight.T", np.asarray(weight).T))
        return y if bias is None else self.add(y, self.initializer(f"{name}.bias", bias))

    def conv(self, x, weight, bias, name, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        """NCHW convolution with zero padding."""
        inputs = [x, self.initializer(f"{name}.weight", weight)]
        if bias is not None:
            inputs.append(self.initializer(f"{name}.bias", bias))
        kh, kw = np.shape(weight)[2:]
        return self.op("Conv", *inputs, kernel_shape=[kh, kw], strides=list(stride), dilations=list(dilation),
                       pads=[padding[0], padding[1], padding[0], padding[1]], group=groups)

    # ------------------------------------------------------------------ resampling
    def resize(self, x, size):
        """Bilinear resize of NCHW `x` to `size` (int64 (2,) tensor), align_corners=False.

        ONNX `half_pixel` linear resize is PyTorch's formula: source = (i + 0.5) * in/out - 0.5,
        clamped at the border, no antialiasing (what `models.kernels.layers.resize` computes as matrices).
        """
        sizes = self.concat([self.dims(x, 0, 2), size], axis=0)
        return self.op("Resize", x, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")

    def adaptive_pool_matrix(self, length, out):
        """(out, length) averaging matrix with PyTorch's bins [floor(i*L/out), ceil((i+1)*L/out)),
        built in the graph from the int64 scalar `length` (`models.constants.adaptive_pool_matrix`)."""
        i = self.ints(range(out))
        start = self.op("Div", self.mul(i, length), self.ints([out]))  # floor: both non-negative
        end = self.op("Div", self.add(self.mul(self.add(i, self.ints([1])), length), self.ints([out - 1])),
                      self.ints([out]))  # ceil((i + 1) * L / out)
        position = self.op("Range", self.const(0, np.int64), length, self.const(1, np.int64))  # (L,)
        start, end = self.unsqueeze(start, [1]), self.unsqueeze(end, [1])  # (out, 1)
        inside = self.op("And", self.op("GreaterOrEqual", position, start), self.op("Less", position, end))
        count = self.op("Cast", self.sub(end, start), to=self.float_type)
        return self.div(self.op("Cast", inside, to=self.float_type), count)  # (out, L)

    def adaptive_avg_pool(self, x, out):
        """PyTorch-exact AdaptiveAvgPool2d((out, out)) of NCHW `x`: rows, then columns."""
        pool_h = self.adaptive_pool_matrix(self.dim(x, 2), out)  # (out, H)
        pool_w = self.adaptive_pool_matrix(self.dim(x, 3), out)  # (out, W)
        rows = self.matmul(pool_h, x)  # (B, C, out, W)
        return self.matmul(rows, self.transpose(pool_w, (1, 0)))  # (B, C, out, out)

    # ------------------------------------------------------------------ model
    def build(self, inputs, outputs, name, doc=""):
        """The ModelProto. inputs/outputs: [(name, dims)], dims ints or axis names."""
        import onnx
        from onnx import helper, numpy_helper

        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(n, self.float_type, dims) for n, dims in inputs],
            [helper.make_tensor_value_info(n, self.float_type, dims) for n, dims in outputs],
            initializer=[numpy_helper.from_array(a, n) for n, a in self.initializers.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="DFormer-Jittor utils/export_onnx.py", doc_string=doc)
        # the oldest IR version that carries this opset, so older runtimes can read the file
        model.ir_version = onnx.helper.find_min_ir_version_for(model.opset_import)
        return model
