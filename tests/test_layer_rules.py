"""Each module class of `models/` carries its ONNX rule and its FLOPs rule beside its `execute`
(docs/contributing.md): these tests find a class that lacks one, by reading the classes and by
watching which modules run matrix products."""
import importlib
import inspect
import pkgutil
import sys

import numpy as np
import pytest

import models


def model_classes():
    """Every layer class defined in `models/`: nn.Module subclasses that run (an `execute`; not the
    library ops' `jt.Function`s), the CPU kernels in models/kernels excepted."""
    import jittor as jt
    from jittor import nn

    found = {}
    for info in pkgutil.walk_packages(models.__path__, "models."):
        if info.name.startswith("models.kernels"):
            continue
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if (inspect.isclass(cls) and issubclass(cls, nn.Module) and cls.__module__ == info.name
                    and not issubclass(cls, jt.Function) and cls.execute is not nn.Module.execute):
                found[f"{info.name}.{cls.__qualname__}"] = cls
    return found


def without_onnx_rule(classes):
    """Names of the classes with no ONNX rule, or with an `execute` of their own but an inherited rule
    (the rule mirrors `execute`, so a class that changes one states the other)."""
    from utils.onnx_export.handlers import onnx_rule

    return sorted(name for name, cls in classes.items()
                  if onnx_rule(cls) is None or ("execute" in vars(cls) and "onnx" not in vars(cls)))


def test_every_model_class_has_its_onnx_rule():
    from jittor import nn

    classes = model_classes()
    assert {"models.encoders.DFormerv2.GeoPriorGen", "models.layers.Linear",
            "models.decoders.ham_head.NMF2D"} <= set(classes)  # the walk finds the model files
    assert without_onnx_rule(classes) == []

    class Probe(nn.Module):  # an `execute` of its own and no rule: caught
        def execute(self, x):
            return x

    class ProbeConv(models.layers.Conv2d):  # a new `execute`, the parent's rule inherited: caught
        def execute(self, x):
            return x

    assert without_onnx_rule({"Probe": Probe, "ProbeConv": ProbeConv}) == ["Probe", "ProbeConv"]


RESAMPLING = ("resize", "adaptive_avg_pool_nhwc", "upsample_nhwc")  # products by interpolation matrices


def product_calls(monkeypatch, model, *inputs):
    """[(module, MACs of the matrix products it ran itself, its FLOPs rule's (module, products))] for
    each module call of one lazy forward (nothing computed) off the CPU fast path, where every product
    goes through `layout.matmul` / `layout.matmul_2d`. Products of the resampling helpers in
    `layers.py` (interpolation, pooling: counted by no rule) are left out."""
    import jittor as jt

    from models import kernels, layers, layout
    from utils.speed.flops import module_macs

    resampling = {getattr(layers, name).__code__ for name in RESAMPLING}
    stack, calls = [], []

    def counted(product, macs):
        def run(a, b, *args, **kwargs):
            if stack and sys._getframe(1).f_code not in resampling:
                stack[-1][1] += macs(a, b, *args, **kwargs)
            return product(a, b, *args, **kwargs)
        return run

    def batched_macs(a, b, trans_a=False, trans_b=False):
        n, m = (a.shape[-1], a.shape[-2]) if trans_a else (a.shape[-2], a.shape[-1])
        k = b.shape[-2] if trans_b else b.shape[-1]
        return int(np.prod(np.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2])))) * n * m * k

    def macs_2d(a, b, trans_b=False):
        return a.shape[0] * a.shape[1] * (b.shape[0] if trans_b else b.shape[1])

    wrapped = {layout.matmul: counted(layout.matmul, batched_macs),
               layout.matmul_2d: counted(layout.matmul_2d, macs_2d)}
    for name, module in list(sys.modules.items()):
        if name == "models" or name.startswith("models."):
            for attr, value in list(vars(module).items()):
                if callable(value) and value in wrapped:
                    monkeypatch.setattr(module, attr, wrapped[value])
    monkeypatch.setattr(kernels, "switched_on", False)

    def pre(module, args, kwargs=None):
        stack.append([module, 0])

    def post(module, args, output, kwargs=None):
        module, measured = stack.pop()
        calls.append((module, measured, module_macs(module, args, output)))

    modules = list(model.modules())
    for m in modules:
        m.register_pre_forward_hook(pre)
        m.register_forward_hook(post)
    try:
        model.eval()
        with jt.no_grad():
            model(*inputs)  # never synced: the graph is dropped without running
    finally:
        for m in modules:
            m.remove_pre_forward_hook()
            m.remove_forward_hook()
    return calls


def unruled_products(calls):
    """Class names whose calls ran products their FLOPs rule does not count, or whose rule counts
    products they did not run: no rule, or a count of products (thop's count for the layers thop
    sees) other than the products run."""
    return sorted({type(module).__name__ for module, measured, (thop, products) in calls
                   if (measured or products) and measured not in (products, thop if products == 0 else None)})


def stock_layers_without_rules(model):
    """Jittor's own layer classes in `model` that have no entry in `JITTOR_RULES`, or that thop would
    count (convolutions, Linear, norms: those need our subclass, whose FLOPs rule counts them)."""
    from jittor import nn

    from utils.onnx_export.handlers import JITTOR_RULES

    stock = {type(m) for m in model.modules() if type(m).__module__.startswith("jittor")}
    return sorted(cls.__name__ for cls in stock
                  if cls not in JITTOR_RULES or issubclass(cls, (nn.Conv, nn.Linear, nn.BatchNorm, nn.LayerNorm)))


@pytest.mark.parametrize("config", ["DFormer_Tiny", "DFormerv2_S"])
def test_every_module_that_runs_products_counts_them(monkeypatch, config):
    import jittor as jt

    from models import build_model
    from utils.entry import load_config

    jt.set_global_seed(0)
    model = build_model(load_config(f"local_configs.Synthetic.{config}"))
    rgb, depth = jt.zeros((1, 3, 96, 128)), jt.zeros((1, 3, 96, 128))
    calls = product_calls(monkeypatch, model, rgb, depth)
    ran = {type(module).__name__ for module, measured, _ in calls if measured}
    expected = {"DFormer_Tiny": {"Linear", "attention", "NMF2D"},
                "DFormerv2_S": {"Linear", "Decomposed_GSA", "Full_GSA", "NMF2D"}}[config]
    assert ran == expected  # the watch sees the products
    assert unruled_products(calls) == []
    assert stock_layers_without_rules(model) == []


def test_the_mlp_decoder_counts_its_products(monkeypatch):
    import jittor as jt

    from models.decoders.MLPDecoder import DecoderHead

    jt.set_global_seed(0)
    head = DecoderHead([8, 16, 24, 32], num_classes=5, embed_dim=12)
    inputs = [jt.zeros((1, c, 16 // 2 ** i, 20 // 2 ** i)) for i, c in enumerate([8, 16, 24, 32])]
    calls = product_calls(monkeypatch, head, inputs)
    assert {type(module).__name__ for module, measured, _ in calls if measured} == {"Linear"}
    assert unruled_products(calls) == []
    assert stock_layers_without_rules(head) == []


def test_a_module_whose_products_no_rule_counts_is_caught(monkeypatch):
    import jittor as jt
    from jittor import nn

    from models import layout

    class Unruled(nn.Module):
        def execute(self, x):
            return layout.matmul(x, x, trans_b=True)

    class Miscounted(Unruled):
        def macs(self, inputs, output):
            return 0, 1

    class Counted(Unruled):
        def macs(self, inputs, output):
            B, n, m = inputs[0].shape
            return 0, B * n * m * n

    class Phantom(Counted):  # counts products it does not run
        def execute(self, x):
            return x

    x = jt.zeros((2, 3, 4))
    assert unruled_products(product_calls(monkeypatch, Phantom(), x)) == ["Phantom"]
    stock = jt.nn.Sequential(jt.nn.Conv2d(1, 1, 1), jt.nn.ReLU(), jt.nn.GELU())  # thop-counted, ruled, unruled
    assert stock_layers_without_rules(stock) == sorted([type(stock[0]).__name__, type(stock[2]).__name__])
    assert unruled_products(product_calls(monkeypatch, Unruled(), x)) == ["Unruled"]
    assert unruled_products(product_calls(monkeypatch, Miscounted(), x)) == ["Miscounted"]
    assert unruled_products(product_calls(monkeypatch, Counted(), x)) == []
