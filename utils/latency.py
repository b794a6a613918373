"""Inference latency and training throughput of a config's model.

    python utils/latency.py --config local_configs.NYUDepthv2.DFormer_Tiny --batch-sizes 1 8 [--train | --onnx]

`--onnx` times the model exported to ONNX in ONNX Runtime, alternating with Jittor in every iteration
so that a noisy, shared machine slows both alike. The timing itself is `utils/speed/timing.py`.
"""
import json
import os
import sys

if __package__ in (None, ""):  # run as a file, not with -m: see utils/entry.py
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from utils.entry import config_parser, load_config, main_guard  # noqa: E402  (Jittor defaults; no Jittor import)
from utils.files import atomic_open  # noqa: E402
from utils.speed.timing import (device_info, format_protocol_time, measure_latency,  # noqa: E402
                                measure_side_by_side, measure_training, projected_protocol_time, timing_stats)


def parse_args(argv=None):
    parser = config_parser(__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--precision", choices=["fp32", "amp", "fp16"], default="fp32",
                        help="amp: float32 weights under autocast; fp16: float16 weights (GPU only)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed iterations, at least; more until one compiles no new op")
    parser.add_argument("--iters", type=int, default=30, help="timed iterations")
    parser.add_argument("--train", action="store_true",
                        help="also measure training images/s (forward+backward+AdamW) and peak memory")
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--train-iters", type=int, default=5)
    parser.add_argument("--onnx", action="store_true",
                        help="also time the model exported to ONNX in ONNX Runtime, alternating with Jittor")
    parser.add_argument("--onnx-threads", type=int, help="ONNX Runtime threads (default: one per CPU core)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.precision != "fp32" and (args.onnx or args.train):  # refused before the model is built
        parser.error("--onnx and --train time fp32 only")
    return args


def main(argv=None):
    args = parse_args(argv)
    import jittor as jt
    from models import build_model

    config = load_config(args.config)
    model = build_model(config)
    info = device_info()
    report = {"config": args.config, "backbone": config.backbone, "height": args.height, "width": args.width,
              "precision": args.precision, "model_mode": "eval, no_grad", "warmup": args.warmup,
              "iters": args.iters, "inputs": "rgb (B,3,H,W) and depth (B,3,H,W), uniform random",
              "environment": info, "latency": [], "train": None}
    print(f"{config.backbone} ({args.config}) | {info['mode']} {info['device']} | Jittor {info['jittor']}"
          + (f" | CUDA {info.get('cuda')} | cuDNN {info.get('cudnn')}" if info["mode"] == "GPU" else
             f" | oneDNN {'on' if info.get('onednn') else 'off'}")
          + f" | {args.precision}, eval mode, {args.height}x{args.width}, warm-up {args.warmup}, {args.iters} timed")
    timer = time_onnx_next_to_jittor if args.onnx else time_jittor
    report["latency"] = [timer(model, batch_size, args) for batch_size in args.batch_sizes]
    if not args.onnx and report["latency"] and (args.height, args.width) == (480, 640):
        first = report["latency"][0]
        report["protocol"] = projected_protocol_time(first["images_per_s"])
        print("  " + format_protocol_time(report["protocol"]) + f" (from batch {first['batch_size']})")
    if args.train and not args.onnx:
        jt.gc()
        from utils.engine.optim import build_optimizer

        train = measure_training(model, config.num_classes, args.train_batch_size, args.height, args.width,
                                 iters=args.train_iters, progress=not args.no_progress,
                                 optimizer=build_optimizer(model, config))
        report["train"] = dict(train, batch_size=args.train_batch_size)
        memory = train["peak_memory"]
        print(f"  train batch {args.train_batch_size}: {train['images_per_s']:.2f} images/s "
              f"(median step {train['median_ms']:.0f} ms) | peak memory {memory['bytes'] / 2**30:.2f} GiB "
              f"[{memory['what']}]")
    if args.json:
        with atomic_open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    return report


def time_jittor(model, batch_size, args):
    """Time `model` at this batch in Jittor; print and return the numbers."""
    run = measure_latency(model, batch_size, args.height, args.width, args.warmup, args.iters, args.precision,
                          progress=not args.no_progress)
    stats = timing_stats(run["times_s"], batch_size)
    stats.update(batch_size=batch_size, loop_mean_ms=1e3 * run["loop_s"] / max(args.iters, 1))
    print(f"  batch {batch_size:>3}: median {stats['median_ms']:9.1f} ms | min {stats['min_ms']:9.1f} ms | "
          f"p90 {stats['p90_ms']:9.1f} ms | {stats['images_per_s']:8.2f} images/s")
    return stats


def time_onnx_next_to_jittor(model, batch_size, args):
    """Export `model` at this batch and size, time both alternately, print and return the numbers."""
    from utils.onnx_export.export import export_model
    from utils.onnx_export.backend import create_session, require_onnx

    require_onnx()
    import onnxruntime

    proto = export_model(model, args.height, args.width, batch=batch_size)
    session = create_session(proto.SerializeToString(), args.onnx_threads)
    threads = args.onnx_threads or os.cpu_count()
    times = measure_side_by_side(model, session, batch_size, args.height, args.width, args.warmup, args.iters,
                                 progress=not args.no_progress)
    stats = {"batch_size": batch_size, "onnxruntime_version": onnxruntime.__version__, "onnx_threads": threads}
    for name, label in (("jittor", "Jittor"), ("onnxruntime", f"ONNX Runtime ({threads} threads)")):
        stats[name] = timing_stats(times[name], batch_size)
        print(f"  batch {batch_size:>3} {label:>26}: median {stats[name]['median_ms']:9.1f} ms | "
              f"min {stats[name]['min_ms']:9.1f} ms | p90 {stats[name]['p90_ms']:9.1f} ms")
    stats["speedup"] = stats["jittor"]["median_ms"] / stats["onnxruntime"]["median_ms"]
    print(f"  batch {batch_size:>3}: ONNX Runtime is {stats['speedup']:.2f}x Jittor (median, alternating runs)")
    return stats


if __name__ == "__main__":
    main_guard(main)
