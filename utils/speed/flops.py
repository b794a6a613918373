"""Parameters and FLOPs of the DFormer / DFormerv2 models (the library of `benchmark.py`).

Two FLOPs counts, both in multiply-accumulates (GFLOPs = GMACs, as the papers publish them), from
the FLOPs rule beside each module class of `models/`: `macs(inputs, output)` -> (module, products)
for one call, where the class does arithmetic that a count should see (see docs/contributing.md):

- "module" reproduces `thop.profile` (pytorch-OpCounter 0.1.1), which the official `benchmark.py`
  uses and the papers' FLOPs columns come from: thop only sees nn.Modules of a few types, each with
  its own rule (checked against thop on the official models, per module type): convolutions,
  Linear, BatchNorm, nn.LayerNorm (DFormer v1's `FrozenLayerNorm` is not one: 0) and DFormer v1's
  7x7 adaptive pool (counted on `attention`); GELU, ReLU, softmax, interpolation, NMF, products: 0.
- "full" adds the matrix products thop misses: the attention products (q k^T and attn v of
  DFormer's 7x7-query attention, DFormerv2's axial and full geometry attention) and the NMF2D
  products (7 evaluation steps). Softmax, normalisation and elementwise ops are still not counted.

The count runs the real forward under Jittor's lazy execution without ever syncing: every shape is
known when an op is created, so hooks read the shapes and nothing is computed (a few seconds per
model even at 480x640 on a CPU). Batch size 1, rgb (1, 3, H, W) and depth (1, 3, H, W), eval mode.
"""
import math

from models.registry import MODELS
from utils.entry import load_config


def _numel(shape):
    return math.prod(int(s) for s in shape)


def module_macs(module, inputs, output):
    """(thop's count, the products beyond it) of one call of `module`: its class's FLOPs rule."""
    rule = getattr(module, "macs", None)
    return rule(inputs, output) if rule else (0, 0)


def count_params(model):
    """(backbone, head, total) counts of all trainable parameters, as `model.parameters()` in PyTorch.

    Jittor's `parameters()` also lists buffers (BN running statistics, DFormerv2's angle/decay);
    those are stop-grad Vars and are left out. thop's own parameter count is a little lower
    (it skips parameters held outside its known layer types, e.g. layer scales); the published
    numbers round both the same way.
    """
    def total(module):
        return sum(_numel(p.shape) for p in module.parameters() if not p.is_stop_grad())

    return total(model.backbone), total(model.decode_head), total(model)


def count_macs(model, height, width, batch_size=1):
    """{"module": {...}, "full": {...}} MACs by part (backbone, head, total) for one forward.

    Runs the forward lazily: outputs are never synced, so Jittor computes nothing.
    """
    import jittor as jt

    names = {id(m): name for name, m in model.named_modules()}
    totals = {kind: {"backbone": 0, "head": 0} for kind in ("module", "full")}
    per_type = {}

    def hook(module, inputs, output, kwargs=None):  # Jittor passes kwargs when the call had some
        part = "backbone" if names.get(id(module), "").startswith("backbone") else "head"
        macs, extra = module_macs(module, inputs, output)
        totals["module"][part] += macs
        totals["full"][part] += macs + extra
        if macs or extra:
            kind = type(module).__name__
            per_type[kind] = per_type.get(kind, 0) + macs + extra

    modules = [m for m in model.modules() if m is not model]
    for m in modules:
        m.register_forward_hook(hook)
    model.eval()
    try:
        with jt.no_grad():
            rgb = jt.zeros((batch_size, 3, height, width))
            depth = jt.zeros((batch_size, 3, height, width))
            out = model(rgb, depth)
            assert tuple(out.shape) == (batch_size, model.decode_head.conv_seg.out_channels, height, width)
            del out, rgb, depth  # never synced: the graph is dropped without running
    finally:
        for m in modules:
            m.remove_forward_hook()
    for kind in totals:
        totals[kind]["total"] = totals[kind]["backbone"] + totals[kind]["head"]
    return {**totals, "per_type": per_type}


def benchmark_config(config_name, sizes=((480, 640), (530, 730))):
    from models import build_model

    C = load_config(config_name)
    model = build_model(C)
    backbone, head, total = count_params(model)
    result = {"config": config_name, "backbone": C.backbone, "decoder_embed_dim": C.decoder_embed_dim,
              "params": {"backbone": backbone, "head": head, "total": total}, "macs": {}}
    for height, width in sizes:
        result["macs"][f"{height}x{width}"] = count_macs(model, height, width)
    return result


def format_table(results, sizes):
    from tabulate import tabulate

    rows = []
    for r in results:
        spec = MODELS.get(r["backbone"])
        p = r["params"]
        row = [r["backbone"], *(f"{p[part] / 1e6:.2f}" for part in ("backbone", "head", "total")),
               spec.params_m if spec else ""]
        for height, width in sizes:
            m = r["macs"][f"{height}x{width}"]
            published = dict(zip([(480, 640), (530, 730)], spec.gflops)).get((height, width), "") if spec else ""
            row += [f"{m['module']['total'] / 1e9:.2f}", published, f"{m['full']['total'] / 1e9:.2f}"]
        rows.append(row)
    headers = ["model", "params backbone (M)", "head (M)", "total (M)", "published (M)"]
    for height, width in sizes:
        headers += [f"module GMACs {height}x{width}", "published", f"full GMACs {height}x{width}"]
    return tabulate(rows, headers=headers, disable_numparse=True)
