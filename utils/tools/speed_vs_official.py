"""Training or inference speed and peak memory of this Jittor model next to the official PyTorch
model, measured side by side: one process per side, one step at a time, alternating, so both see
the same machine load.

    python -m utils.tools.speed_vs_official --official-dir ../DFormer --torch-python ../torchvenv/bin/python \
        --configs DFormer_Tiny DFormerv2_S --sizes 120x160 240x320          # training, batch 8
    python -m utils.tools.speed_vs_official ... --mode infer                # inference, 1x480x640
    python -m utils.tools.speed_vs_official ... --json speed.jsonl          # rows for Chart 2:
    python -m utils.tools.charts speed speed.jsonl docs/speed_vs_official.png

The official model is built as upstream's train.py and eval.py build it with their default
`--syncbn`. A training step (`--mode train`) is forward, cross-entropy over labelled pixels,
backward and an AdamW update over the official parameter groups; an inference step (`--mode
infer`) is one forward in eval mode without gradients. Both run on one fixed random batch
(B, 3, H, W) rgb and depth, uniform in [0, 1). The official code is imported from `--official-dir` by the PyTorch worker
only (it is never copied here); its NMF bases are drawn on the CPU instead of upstream's `.cuda()`.
Peak memory is each worker process's peak RSS. Jittor uses its default threads (all cores),
PyTorch `--torch-threads`. The Jittor worker warms up until a step compiles no new op and then
runs with Jittor's parallel compiler off (`utils.speed.timing.warm_up`, `prepared`), so no timed
step prepares its ops twice. `--baseline-root` times a third side, another checkout of this
repository with the same `utils/engine/` layout and `utils/speed/timing.py`'s `warm_up`.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def jittor_worker(config, mode, batch, height, width):
    """A `step()` closure for the model of the repository checkout this worker runs in (under the
    Jittor Python, with the checkout as its working folder and on its PYTHONPATH)."""
    from models import build_model
    from utils.entry import load_config

    C = load_config(f"local_configs.NYUDepthv2.{config}")
    model = build_model(C)  # sets Jittor's defaults, then imports it

    import jittor as jt

    from utils.engine.loss import cross_entropy
    from utils.engine.optim import build_optimizer

    jt.set_global_seed(0)
    rgb, depth = jt.rand((batch, 3, height, width)), jt.rand((batch, 3, height, width))
    if mode == "infer":
        model.eval()

        def infer():
            with jt.no_grad():
                model(rgb, depth).sync()
            jt.sync_all(True)

        return infer
    model.train()
    optimizer = build_optimizer(model, C)
    label = jt.randint(0, C.num_classes, (batch, height, width))

    def step():
        optimizer.step(cross_entropy(model(rgb, depth), label))  # the training loss of utils/train.py
        jt.sync_all(True)

    return step


def torch_worker(cfg, mode, batch, height, width, threads):
    """A `step()` closure for the official model (run under a Python with torch, with the official
    checkout as its working folder and on its PYTHONPATH)."""
    import torch
    import torch.nn.functional as F
    import models.decoders.ham_head as ham
    # this file's folder leads the path: the official glue (standard library at import)
    from official import build_official, official_optimizer

    torch.set_num_threads(threads)
    ham.NMF2D._build_bases = lambda self, B, S, D, R, cuda=False: F.normalize(torch.rand((B * S, D, R)), dim=1)
    model = build_official(cfg)
    torch.manual_seed(0)
    rgb, depth = torch.rand(batch, 3, height, width), torch.rand(batch, 3, height, width)
    if mode == "infer":
        model.eval()

        def infer():
            with torch.no_grad():
                model(rgb, depth)

        return infer
    model.train()
    optimizer = official_optimizer(model, cfg)
    label = torch.randint(0, cfg["num_classes"], (batch, height, width))

    def step():
        loss = model(rgb, depth, label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def serve(step):
    """Worker loop: 'step' -> one timed step (seconds on stdout); 'quit' -> peak RSS (bytes)."""
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            start = time.perf_counter()
            step()
            print(time.perf_counter() - start, flush=True)
        else:
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
            return


def official_model_cfg(config):
    """`official.official_cfg` of a NYUDepthv2 config name."""
    from utils.entry import load_config
    from utils.tools.official import official_cfg

    return official_cfg(load_config(f"local_configs.NYUDepthv2.{config}"))


class Worker:
    def __init__(self, command, root):
        """Start `command` in folder `root`, whose packages come first on its path."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = os.path.abspath(root)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=root, env=env)
        self._expect("ready")

    def _expect(self, word):
        for line in self.process.stdout:
            if line.strip() == word:
                return
        raise RuntimeError(f"worker {self.process.args[:3]} exited (code {self.process.wait()})")

    def ask(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args[:3]} exited (code {self.process.wait()})")
        return float(line)

    def close(self):
        peak = self.ask("quit")
        self.process.wait()
        return peak


def compare(args, config, height, width):
    me = [sys.executable, os.path.abspath(__file__), "--mode", args.mode, "--batch", str(args.batch),
          "--size", f"{height}x{width}"]
    workers = {"jittor": Worker(me + ["--worker", "jittor", "--config", config], ROOT)}
    if args.baseline_root:
        workers["baseline"] = Worker(me + ["--worker", "jittor", "--config", config], args.baseline_root)
    workers["torch"] = Worker([args.torch_python] + me[1:] + ["--worker", "torch",
                                                   "--torch-threads", str(args.torch_threads),
                                                   "--cfg", json.dumps(official_model_cfg(config))],
                                args.official_dir)
    times = {name: [] for name in workers}
    for round_ in range(args.warmup + args.rounds):  # alternate, swapping who goes first
        for name, worker in list(workers.items())[::1 if round_ % 2 else -1]:
            seconds = worker.ask("step")
            if round_ >= args.warmup:
                times[name].append(seconds)
    from utils.speed.timing import provenance

    # both workers run on the CPU; the chart draws one pair of bars per device
    row = {"config": config, "mode": args.mode, "batch": args.batch, "height": height, "width": width,
           "device": "CPU", **provenance()}
    for name, worker in workers.items():
        row[name] = {"median_ms": 1e3 * statistics.median(times[name]), "min_ms": 1e3 * min(times[name]),
                     "peak_rss_bytes": worker.close(), "times_s": times[name]}
    row["ratio"] = row["jittor"]["median_ms"] / row["torch"]["median_ms"]
    return row


def baseline_cells(row):
    if "baseline" not in row:
        return ""
    base = row["baseline"]
    return f" | {base['median_ms']:.0f} ({base['min_ms']:.0f}) | {base['peak_rss_bytes'] / 2**30:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-dir", help="a checkout of the official VCIP-RGBD/DFormer repository")
    parser.add_argument("--torch-python", help="a Python interpreter with torch, mmcv-lite, mmengine, timm")
    parser.add_argument("--configs", nargs="+", default=["DFormer_Tiny", "DFormerv2_S", "DFormer_Large"],
                        help="NYUDepthv2 config names")
    parser.add_argument("--mode", choices=["train", "infer"], default="train")
    parser.add_argument("--sizes", nargs="+", help="HxW (default: 120x160 to train, 480x640 to infer)")
    parser.add_argument("--batch", type=int, help="default: 8 to train, 1 to infer")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--baseline-root", help="another checkout of this repository, timed in the same rounds")
    parser.add_argument("--json", help="append each result row to this JSON-lines file (Chart 2: "
                        "python -m utils.tools.charts speed FILE PNG)")
    parser.add_argument("--worker", choices=["jittor", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--cfg", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        height, width = map(int, args.size.split("x"))
        if args.worker == "jittor":
            from utils.speed.timing import prepared, warm_up  # the timing code of the checkout timed

            step = jittor_worker(args.config, args.mode, args.batch, height, width)
            warm_up(step, 1)  # until no op compiles; then every step prepares its ops once
            with prepared():
                serve(step)
        else:
            serve(torch_worker(json.loads(args.cfg), args.mode, args.batch, height, width, args.torch_threads))
        return
    training = args.mode == "train"
    args.sizes = args.sizes or (["120x160"] if training else ["480x640"])
    args.batch = args.batch or (8 if training else 1)
    if not (args.official_dir and args.torch_python):
        parser.error("--official-dir and --torch-python are required")
    baseline = " | baseline ms (min) | baseline peak RSS GiB" if args.baseline_root else ""
    print(f"| model | batch x H x W | PyTorch ms (min) | Jittor ms (min) | Jittor / PyTorch | "
          f"peak RSS GiB PyTorch / Jittor{baseline} |")
    print("|---" * (8 if args.baseline_root else 6) + "|")
    for size in args.sizes:
        height, width = map(int, size.split("x"))
        for config in args.configs:
            row = compare(args, config, height, width)
            t, j = row["torch"], row["jittor"]
            print(f"| {config} | {args.batch}x{height}x{width} | {t['median_ms']:.0f} ({t['min_ms']:.0f}) | "
                  f"{j['median_ms']:.0f} ({j['min_ms']:.0f}) | {row['ratio']:.2f} | "
                  f"{t['peak_rss_bytes'] / 2**30:.2f} / {j['peak_rss_bytes'] / 2**30:.2f}" + baseline_cells(row) + " |",
                  flush=True)
            if args.json:
                with open(args.json, "a") as file:
                    file.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
