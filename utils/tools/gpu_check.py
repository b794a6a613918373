"""One-shot check of the seven NYUDepthv2 models on a real NVIDIA GPU: correctness, training, speed.

Everything runs in one command, for a GPU machine without network (CUDA 13, cuDNN 9, PyTorch
installed) and a short time limit:

    python -m utils.jittor_doctor --fix && python -m utils.tools.gpu_check --official-dir .official --out $OUT

First, what a first GPU run most likely trips on: cuDNN convolving NHWC tensors and cuBLAS
reading transposed operands (values and gradients against stock ops and numpy), then three AMP
training steps of the first model in a process of its own (float16 and float32 must not share a
process: cuDNN's algorithm caches do not tell the dtypes apart). Then each model, built once, with
the synthetic stand-in weights of utils/tools/stand_in_weights.py:
  1. an eval forward and a training step under `jt.flags.use_cuda = 2`, where Jittor stops with an
     error at any op that would run on the CPU (utils/tools/gpu_graph.py: the "GPU op graph" check);
  2. eval logits at 1x3x64x96 (NMF bases pinned) against a CPU run of the same weights, made in a
     subprocess started with `nvcc_path=""` (Jittor cannot switch devices reliably inside one
     process): max |diff| <= 1e-3, and the argmax on >= 99 % of the pixels;
  3. three forward/backward/AdamW steps (utils.engine.trainer.train_step, utils.engine.optim.build_optimizer)
     on one batch with the same dropout draws each step: the loss must drop;
  4. for DFormer-Tiny and DFormerv2-S the 15 slowest ops of one eval forward at 1x480x640;
  5. latency at 480x640, batch 1 and 8, fp32: eval, no_grad, warm-up until no op compiles, median
     of 30 synced runs with Jittor's parallel compiler off (utils.speed.timing.measure_latency);
  6. with --official-dir (a VCIP-RGBD/DFormer checkout) and an importable torch: the official
     PyTorch model in a subprocess, same weights, timed the same way in the same run, and its
     logits compared with Jittor's GPU logits (<= 1e-3);
  7. while time is left: training speed (one process per model), then AMP training steps and fp16
     latency of every model in one process of their own.
Before all that it prints the environment and refuses (exit 2) when `utils.jittor_doctor` reports
problems not yet fixed, tries whether Jittor loads cutt (optional: used when it loads, else
use_cutt=0) and checks that convolutions run through cuDNN (the `cudnn_conv` op).

Results go to --out (default output/gpu_check/): gpu_check.json and gpu_check.md, rewritten after
every step, so a run killed half-way still leaves its numbers. Exit code 0 only when every check
passed. On a fresh machine Jittor compiles its core at import and every kernel on first use: the
first minutes and the "first fwd" column are mostly compilation, not model time. fp32 runs without
TF32 on both sides (NVIDIA_TF32_OVERRIDE=0, cudnn.benchmark on for PyTorch) unless --tf32.
--budget-s (default 480 s on a GPU) stops starting steps early enough to write the report within
a 10-minute time limit.

    python -m utils.tools.gpu_check --cpu-smoke --models DFormer-Tiny,DFormerv2-S --out /tmp/smoke

runs the same pipeline on the CPU at 32x48 with 1-2 timing iterations, so CI checks the logic
without a GPU; the "GPU" side is then the CPU too, and the diff must be ~0. The GPU op graph is
then checked from the profile of a CPU run with the CPU kernels off (DFORMER_CPU_KERNELS=0).

How to prepare and run it on a GPU machine without network (carried wheels): docs/gpu.md.
"""
import argparse
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

from models.jittor_env import apply_defaults
from models.registry import find_model
from utils.tools.gpu_jittor import (ARGMAX_AGREEMENT, CHECK_MODELS, CHECK_SEED, OFFICIAL_TOLERANCE,
                                    START, TRAIN_STEPS, CpuReference, apply_gpu_defaults, build_with_weights,
                                    config_module, cpu_reference_main, environment_or_refuse, eval_logits,
                                    half_precision_main, import_jittor, log, median_ms, official_train_size,
                                    risky_ops_fp32, run_half_precision, step, train_speed_jittor, training_losses)
from utils.tools.gpu_report import Report, dims
from utils.tools.official import official_cfg, run_official

PROFILED_MODELS = ("DFormer-Tiny", "DFormerv2-Small")
TOP_OPS = 15
RISKY_OPS_TOLERANCE = 1e-4  # float32 without TF32, sums of at most a few hundred products


@dataclass
class Settings:
    smoke: bool
    check_shape: tuple  # (batch, height, width) of the logits compared with the CPU
    train_shape: tuple
    latency_size: tuple
    batches: tuple
    warmup: int
    iters: int
    fp16: bool
    tf32: bool
    diff_tolerance: float
    budget_s: float  # 0: no limit
    train_speed: bool = False  # training images/s and peak memory at the official batch and crop

    @classmethod
    def from_args(cls, args):
        if args.cpu_smoke:
            return cls(True, (1, 32, 48), (2, 32, 48), (32, 48), (1, 2), args.warmup or 1, args.iters or 2,
                       False, False, 1e-5, args.budget_s or 0)
        return cls(False, (1, 64, 96), (2, 64, 96), (480, 640), (1, 8), args.warmup or 10, args.iters or 30,
                   not args.no_fp16, args.tf32, 1e-3, 480 if args.budget_s is None else args.budget_s, True)

    def time_left(self):
        return math.inf if not self.budget_s else self.budget_s - (time.time() - START)

    def deadline(self):
        """Wall-clock time (time.time()) after which no step starts; a day away without a budget."""
        return START + self.budget_s if self.budget_s else time.time() + 86400

    def criteria(self):
        return (f"logits at {dims(self.check_shape)} vs a CPU run (max abs diff <= {self.diff_tolerance:g}), "
                f"argmax agreement >= {ARGMAX_AGREEMENT:.0%}, {TRAIN_STEPS} AdamW steps on one batch of "
                f"{dims(self.train_shape)} (loss must drop)")


def resolve_models(text):
    """Official names for "all" or a comma list of models in any spelling (DFormerv2-S, DFormerv2_S, ...)."""
    if text == "all":
        return list(CHECK_MODELS)
    try:
        names = [find_model(item).name for item in filter(None, (part.strip() for part in text.split(",")))]
    except KeyError as error:
        raise ValueError(error.args[0]) from None
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------- pipeline

@dataclass
class ModelRun:
    """What the later phases need from a model's first phase."""
    name: str
    model: object
    C: object
    logits: object  # numpy, eval logits at check_shape on the device under test
    pred: object  # numpy argmax computed on that device


def first_checks(names, settings, report, folder):
    """What a first GPU run most likely trips on, printed before anything else: cuDNN on NHWC
    tensors and cuBLAS with transposed operands (float32, here), then an AMP training step and
    float16 (DFormer-Tiny, in a process of its own: cuDNN's algorithm caches do not tell the dtypes apart)."""
    import jittor as jt

    checks = report.data["first_checks"] = {}
    with step(report.data.setdefault("first_check_errors", []), "NHWC cuDNN and cuBLAS transposes"):
        for what, diff in risky_ops_fp32().items():
            checks[what] = {"max_abs_diff": diff, "passed": diff <= RISKY_OPS_TOLERANCE}
            log(f"first check: {what}: max |diff| {diff:.2e} ({'ok' if diff <= RISKY_OPS_TOLERANCE else 'FAILED'})")
    jt.gc()
    if settings.fp16:
        name = names[0]
        results, tail = run_half_precision([name], settings, folder, latency=False, tag="probe")
        losses = results.get(name, {}).get("amp_losses") or []
        ok = bool(losses) and all(map(math.isfinite, losses))
        checks[f"AMP training steps ({name})"] = {"losses": losses, "passed": ok,
                                                 "errors": results.get(name, {}).get("errors") or ([] if ok else [tail])}
        log(f"first check: AMP training steps of {name}: {losses or tail} ({'ok' if ok else 'FAILED'})")
    report.data["checks"]["first_checks"] = all(c["passed"] for c in checks.values()) and not report.data[
        "first_check_errors"]
    report.save()


def check_gpu_graph(model, C, settings, entry):
    """An eval forward and a training step; no op may leave the GPU. On a GPU under
    `jt.flags.use_cuda = 2`; in the smoke test from the profile of the GPU's op graph."""
    from utils.tools.gpu_graph import cpu_only_ops, gpu_op_graph, profile
    from utils.tools.gpu_jittor import model_steps, run_under_use_cuda_2

    entry["checks"]["gpu_graph"] = False
    with step(entry["errors"], "GPU op graph"):
        start = time.time()
        if settings.smoke:
            with gpu_op_graph():
                found = cpu_only_ops(profile(lambda: model_steps(model, C, settings.train_shape)))
            problem = ", ".join(f"{op} x{count}" for op, count in sorted(found.items())) or None
        else:
            problem = run_under_use_cuda_2(model, C, settings.train_shape)
        entry["cpu_only_ops"] = problem or "none"
        entry["checks"]["gpu_graph"] = problem is None
        log(f"  forward + backward at {dims(settings.train_shape)}, ops that would leave the GPU: "
            f"{problem or 'none'} ({time.time() - start:.1f}s incl. compilation)")


def profile_ops(model, settings, entry):
    """The TOP_OPS slowest ops of one eval forward at batch 1 (after a warm-up forward)."""
    from utils.tools.gpu_graph import op_kinds, profile, top_ops

    shape = (1, *settings.latency_size)
    with step(entry["notes"], "op profile"):
        eval_logits(model, shape, CHECK_SEED)
        start = time.time()
        rows = profile(lambda: eval_logits(model, shape, CHECK_SEED))
        wall_ms = (time.time() - start) * 1e3
        entry["op_profile"] = {"shape": shape, "wall_ms": wall_ms, "op_ms": sum(r[2] for r in rows) * 1e3,
                               "op_kinds": op_kinds(rows), "top": top_ops(rows, TOP_OPS)}
        log(f"  one eval forward at {dims(shape)} under the profiler: {wall_ms:.1f} ms wall, "
            f"{entry['op_profile']['op_ms']:.1f} ms in {sum(r[1] for r in rows)} ops; the slowest:")
        for row in entry["op_profile"]["top"]:
            log(f"  {row['ms']:9.2f} ms {row['share']:6.1%} x{row['count']:<4d} {row['op']}")


def check_model(name, settings, report, profiled):
    """Everything float32 about one model, built once: an eval forward (timed: mostly compilation;
    its logits and argmax are compared with the CPU's), the GPU op graph, training steps and, when
    `profiled`, the op profile."""
    import jittor as jt  # imported here, after `apply_gpu_defaults`, as are the models

    from models.layout import argmax

    entry = report.model(name)
    log(f"{name}: build, eval forward at {dims(settings.check_shape)}, GPU op graph, {TRAIN_STEPS} training steps")
    run = None
    with step(entry["errors"], "build and forward"):
        model, C = build_with_weights(name)
        start = time.time()
        logits = eval_logits(model, settings.check_shape, CHECK_SEED)  # before any training step changes the weights
        entry["first_forward_s"] = round(time.time() - start, 2)
        run = ModelRun(name, model, C, logits.numpy(), argmax(logits, 1).numpy())
        log(f"  first forward {entry['first_forward_s']:.1f}s, logits {tuple(run.logits.shape)}, "
            f"max |logit| {float(abs(run.logits).max()):.3f}")
    if run is None:
        entry["checks"]["forward"] = False
        return None
    check_gpu_graph(run.model, run.C, settings, entry)
    with step(entry["errors"], "training"):
        start = time.time()
        losses = training_losses(run.model, run.C, settings.train_shape)
        entry.update(losses=losses, loss_before=losses[0], loss_after=losses[-1],
                     train_s=round(time.time() - start, 2))
        log(f"  losses {', '.join(f'{v:.5f}' for v in losses)} ({entry['train_s']:.1f}s incl. compilation)")
    losses = entry.get("losses")
    entry["checks"]["loss_decreased"] = bool(losses) and all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    if profiled:
        profile_ops(run.model, settings, entry)
    jt.gc()
    report.save()
    return run


def half_precision(runs, settings, report, folder):
    """AMP training steps and fp16 latency of every model, in a process of their own (float16
    after float32 in one process would reuse cuDNN algorithms chosen for float32)."""
    results, tail = run_half_precision([run.name for run in runs], settings, folder, latency=True, tag="all")
    for run in runs:
        entry, result = report.model(run.name), results.get(run.name)
        if result is None:
            entry["errors"].append(f"AMP and fp16: no result ({tail})")
            entry["checks"]["amp_finite"] = False
            continue
        entry["errors"] += [f"AMP and fp16: {e}" for e in result["errors"]]
        if result.get("amp_losses"):
            entry["amp_losses"] = result["amp_losses"]
        entry["checks"]["amp_finite"] = bool(entry.get("amp_losses")) and all(map(math.isfinite, entry["amp_losses"]))
        for batch, ms in result["fp16_ms"].items():
            report.set_latency(run.name, "fp16", int(batch), jittor_ms=ms)
    report.save()


def compare_with_reference(run, reference, settings, report):
    """Diff and argmax agreement of the device logits against the CPU reference (or its error)."""
    import numpy as np

    entry = report.model(run.name)
    logits, error = reference
    if logits is None:
        entry["errors"].append(f"CPU reference: {error}")
        entry["checks"].update(diff_vs_cpu=False, argmax=False)
        log(f"{run.name}: no CPU reference: {error}")
        return
    diff = float(np.abs(run.logits - logits).max())
    agreement = float((run.pred == logits.argmax(1)).mean())
    entry.update(max_abs_diff_vs_cpu=diff, argmax_agreement=agreement)
    entry["checks"].update(diff_vs_cpu=diff <= settings.diff_tolerance, argmax=agreement >= ARGMAX_AGREEMENT)
    log(f"{run.name}: max |diff| vs CPU {diff:.2e} (<= {settings.diff_tolerance:g}: "
        f"{entry['checks']['diff_vs_cpu']}), argmax agreement {agreement:.4f}")


def collect_references(runs, cpu_reference, settings, report, wait):
    """Compare every run whose reference has arrived; with `wait`, wait for the rest first."""
    if wait:
        log("waiting for the CPU reference process (timing waits for a quiet CPU)")
        cpu_reference.wait(settings.time_left())
    for name in list(runs):
        logits, error = cpu_reference.result(name)
        if wait and logits is None and error is None:
            error = "not delivered in time"
        if logits is not None or error is not None:
            compare_with_reference(runs.pop(name), (logits, error), settings, report)
    report.save()


def time_jittor(runs, settings, report, precision):
    """Jittor latency of every model at every batch size."""
    for run in runs:
        entry = report.model(run.name)
        messages = entry["errors"] if precision == "fp32" else entry["notes"]
        for batch in settings.batches:
            if settings.time_left() <= 0:
                messages.append(f"latency {precision} batch {batch}: skipped, time budget used up")
                break
            with step(messages, f"latency {precision} batch {batch}"):
                ms = median_ms(run.model, batch, settings, precision)
                report.set_latency(run.name, precision, batch, jittor_ms=ms)
                log(f"{run.name} Jittor {precision} batch {batch}: median {ms:.2f} ms")
        if precision == "fp32":
            rows = [r for r in entry["latency"] if r["precision"] == "fp32" and r["jittor_ms"] is not None]
            entry["checks"]["latency"] = len(rows) == len(settings.batches)
        report.save()


def add_official(result, runs_by_name, report):
    """Merge the PyTorch worker's numbers: latency, ratios and the logits diff."""
    import numpy as np

    report.data["official"] = {k: v for k, v in result.items() if k not in ("models", "torch_version")}
    for name, official in result["models"].items():
        entry = report.model(name)
        entry["errors"] += [f"official: {e}" for e in official["errors"]]
        entry["notes"] += [f"official: {n}" for n in official["notes"]]
        for row in official["latency"]:
            report.set_latency(name, row["precision"], row["batch"], pytorch_ms=row["median_ms"])
        run = runs_by_name.get(name)
        if official.get("logits") and run is not None:
            diff = float(np.abs(run.logits - np.load(official["logits"])).max())
            entry["max_abs_diff_vs_official"] = diff
            entry["checks"]["diff_vs_official"] = diff <= OFFICIAL_TOLERANCE
            log(f"{name}: max |diff| vs the official PyTorch model {diff:.2e}")
        if official.get("train_speed"):
            entry["official_train_speed"] = official["train_speed"]
        fp32_rows = [r for r in official["latency"] if r["precision"] == "fp32"]
        entry["checks"]["official_latency"] = len(fp32_rows) == len(report.settings.batches)


def official_phase(args, runs, settings, report, folder):
    """Phase 4: the official PyTorch model in its own process, with Jittor's GPU memory released."""
    import jittor as jt

    jt.sync_all(True)
    jt.gc()
    spec = {"official_dir": args.official_dir, "device": "cpu" if settings.smoke else "cuda",
            "tf32": settings.tf32, "check_shape": settings.check_shape, "check_seed": CHECK_SEED,
            "models": [{"name": run.name, "cfg": official_cfg(run.C),
                        "train_size": official_train_size(run.name) if settings.train_speed else None}
                       for run in runs],
            "latency_size": settings.latency_size, "batches": settings.batches, "warmup": settings.warmup,
            "iters": settings.iters, "precisions": ["fp32", "fp16"] if settings.fp16 else ["fp32"],
            "deadline": settings.deadline(), "folder": folder, "result": os.path.join(folder, "official.json")}
    try:
        log(f"official PyTorch model: {args.official_dir}")
        result = run_official(spec, args.torch_python, args.torch_pythonpath)
    except Exception as error:  # noqa: BLE001  (a requested comparison that could not run: a failed check)
        report.data["official_status"] = f"failed: {error}"
        report.data["checks"]["official_pytorch"] = False
        log(f"official PyTorch comparison FAILED: {error}")
        return
    report.data["official_status"] = "ran"
    add_official(result, {run.name: run for run in runs}, report)
    report.save()


def check_models(names, cpu_reference, settings, report):
    """Phase 1 for every model, comparing with each CPU reference as it arrives; the ModelRuns."""
    runs, pending = [], {}
    for name in names:
        if settings.time_left() <= 0:
            report.model(name)["errors"].append("skipped, time budget used up")
            continue
        run = check_model(name, settings, report, profiled=name in PROFILED_MODELS or (
            name == names[0] and not set(PROFILED_MODELS) & set(names)))
        if run is not None:
            runs.append(run)
            pending[name] = run
        collect_references(pending, cpu_reference, settings, report, wait=False)
    collect_references(pending, cpu_reference, settings, report, wait=True)
    return runs


def run_pipeline(args, settings, names, report, folder):
    jt = import_jittor(settings, report)
    report.save()
    first_checks(names, settings, report, folder)
    cpu_reference = CpuReference(names, settings, folder)  # started after our import: they share a lock
    try:
        runs = check_models(names, cpu_reference, settings, report)
    finally:
        cpu_reference.wait(0)  # normally long finished; stopped if the models' checks broke off
    time_jittor(runs, settings, report, "fp32")
    if args.official_dir:
        official_phase(args, runs, settings, report, folder)
    if settings.train_speed:
        jt.sync_all(True)
        jt.gc()
        train_speed_jittor(runs, settings, report, folder)
    if settings.fp16:
        half_precision(runs, settings, report, folder)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.tools.gpu_check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all", help="'all' or a comma list, e.g. DFormer-Tiny,DFormerv2-S")
    parser.add_argument("--out", default=os.path.join("output", "gpu_check"),
                        help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--official-dir",
                        help="a VCIP-RGBD/DFormer checkout: also check and time the official PyTorch model")
    parser.add_argument("--torch-python", default=sys.executable, help="interpreter for the PyTorch worker")
    parser.add_argument("--torch-pythonpath",
                        help="PYTHONPATH for the PyTorch worker, replacing the inherited one")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run of the whole pipeline (for CI)")
    parser.add_argument("--warmup", type=int, help="untimed iterations (default 10; smoke 1)")
    parser.add_argument("--iters", type=int, help="timed iterations (default 30; smoke 2)")
    parser.add_argument("--no-fp16", action="store_true", help="skip the fp16 latency")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in both frameworks (default: full fp32)")
    parser.add_argument("--budget-s", type=float, help="start no new step after this many seconds "
                        "(default 480 on a GPU, none with --cpu-smoke; 0: none)")
    parser.add_argument("--cpu-reference", help=argparse.SUPPRESS)  # internal: the CPU reference subprocess
    parser.add_argument("--half-precision", help=argparse.SUPPRESS)  # internal: the AMP and fp16 subprocess
    args = parser.parse_args(argv)
    if args.official_dir and not os.path.isfile(os.path.join(args.official_dir, "models", "builder.py")):
        parser.error(f"--official-dir {args.official_dir} has no models/builder.py (a VCIP-RGBD/DFormer checkout)")
    if args.official_dir:
        args.official_dir = os.path.abspath(args.official_dir)
    try:
        args.model_names = resolve_models(args.models)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.cpu_reference:
        return cpu_reference_main(args.cpu_reference)
    if args.half_precision:
        return half_precision_main(args.half_precision)
    settings = Settings.from_args(args)
    report = Report(args.out, settings, {name: config_module(name) for name in args.model_names}, START,
                    settings.criteria())
    log(f"gpu_check ({'CPU smoke test' if settings.smoke else 'GPU'}): {', '.join(args.model_names)}; "
        f"results in {os.path.abspath(args.out)}")
    apply_defaults()  # the project's Jittor defaults, as every entry point sets them, before the doctor looks
    refusal = environment_or_refuse(settings, report)
    report.data["checks"]["environment"] = refusal is None
    if refusal:
        report.data["refused"] = refusal
        report.save()
        print(f"gpu_check refused: {refusal}", file=sys.stderr, flush=True)
        return 2
    if not settings.smoke:
        report.data["environment"]["cutt"] = apply_gpu_defaults(settings)
        log(f"cutt: {report.data['environment']['cutt']}")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        try:
            run_pipeline(args, settings, args.model_names, report, folder)
        except Exception:  # noqa: BLE001  (e.g. `import jittor` failing: keep what was found)
            report.data["checks"]["pipeline"] = False
            report.data["pipeline_error"] = traceback.format_exc()
            log(f"pipeline FAILED:\n{report.data['pipeline_error']}")
    report.save()
    print("\n" + report.markdown(), flush=True)
    return 0 if report.data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
