"""Ops and Python time of one eval forward's graph on the GPU path, for every model (a maintainer's table).

    python -m utils.tools.graph_size [--models DFormer-Tiny,DFormerv2-S] [--shape 1x480x640] [--repeats 3]

Jittor builds a lazy graph of Python-level ops before anything runs; on a GPU host that is work
the device waits for. This counts the ops of the GPU's graph (`DFORMER_CPU_KERNELS=0`, run on the
CPU), alive after the forward call and before anything runs (`jt.liveness_info()["lived_ops"]`),
and the Python time to build them (CPU time of the building thread), median of `--repeats`
(`gpu_graph.forward_graph_size`). The
CPU's graph differs from the GPU's in two places, both counted higher here: a batched product is
one cuBLAS op on the GPU but a broadcast, multiply and sum on the CPU, and a softmax over the last
axis is one CUDA kernel there but seven ops here.
"""
import argparse

from models.jittor_env import apply_defaults
from utils.tools.gpu_check import resolve_models


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.tools.graph_size", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="'all' or a comma list, e.g. DFormer-Tiny,DFormerv2-S")
    parser.add_argument("--shape", default="1x480x640", help="BxHxW of the inputs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        names = resolve_models(args.models)
    except ValueError as error:
        parser.error(str(error))
    shape = tuple(int(v) for v in args.shape.split("x"))
    apply_defaults()
    from utils.tools.gpu_graph import forward_graph_size, gpu_op_graph
    from utils.tools.gpu_jittor import build_with_weights

    print(f"| model | ops per eval forward ({args.shape}) | Python ms to build them (thread CPU time) |")
    print("|---|---|---|")
    rows = {}
    with gpu_op_graph():
        for name in names:
            model, _ = build_with_weights(name)
            ops, seconds = forward_graph_size(model, shape, args.repeats)
            rows[name] = (ops, seconds)
            print(f"| {name} | {ops:,} | {seconds * 1e3:.0f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
