"""The GPU check's report: everything measured so far, as gpu_check.json and gpu_check.md.

Both files are rewritten after every step (atomically), so a run killed half-way still leaves its
numbers. The Markdown tables are made with `tabulate`, ready to paste into the README.
"""
import json
import os
import time
from dataclasses import asdict

from tabulate import tabulate

from utils.files import atomic_open

JSON_NAME, MARKDOWN_NAME = "gpu_check.json", "gpu_check.md"


def dims(shape):
    return "x".join(map(str, shape))


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def markdown_table(title, header, rows):
    return [f"## {title}", "", tabulate(rows, header, tablefmt="github", disable_numparse=True), ""]


class Report:
    """Results of one run: environment, global checks and, per model, checks, numbers and errors."""

    def __init__(self, out_dir, settings, configs, start_time, criteria):
        """`configs`: {model name: config module}; `criteria`: one line saying what the checks demand."""
        self.out_dir, self.settings, self.start_time, self.criteria = out_dir, settings, start_time, criteria
        os.makedirs(out_dir, exist_ok=True)
        self.data = {"script": "python -m utils.tools.gpu_check", "mode": "cpu-smoke" if settings.smoke else "gpu",
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": asdict(settings),
                     "environment": {}, "checks": {}, "official": None, "official_status": "not requested",
                     "passed": False,
                     "models": {name: {"config": config, "errors": [], "notes": [], "checks": {}, "latency": []}
                                for name, config in configs.items()}}

    def model(self, name):
        return self.data["models"][name]

    def set_latency(self, name, precision, batch, **median_ms):
        """Record jittor_ms and/or pytorch_ms of one (precision, batch) and their ratio once both exist."""
        rows = self.model(name)["latency"]
        row = next((r for r in rows if (r["precision"], r["batch"]) == (precision, batch)), None)
        if row is None:
            row = {"precision": precision, "batch": batch, "jittor_ms": None, "pytorch_ms": None, "ratio": None}
            rows.append(row)
        row.update(median_ms)
        if row["jittor_ms"] is not None and row["pytorch_ms"] is not None:
            row["ratio"] = row["jittor_ms"] / row["pytorch_ms"]

    def failures(self):
        """One line per failed check, error, or model not (yet) checked."""
        failed = [f"{k} check failed" for k, ok in self.data["checks"].items() if not ok]
        for name, entry in self.data["models"].items():
            failed += [f"{name}: {k} check failed" for k, ok in entry["checks"].items() if not ok]
            failed += [f"{name}: {error}" for error in entry["errors"]]
            if not entry["checks"] and not entry["errors"]:
                failed.append(f"{name}: not checked")
        return failed

    def save(self):
        self.data["elapsed_s"] = round(time.time() - self.start_time, 1)
        self.data["failures"] = self.failures()
        self.data["passed"] = not self.data["failures"]
        for name, text in ((JSON_NAME, json.dumps(self.data, indent=1, default=str)), (MARKDOWN_NAME, self.markdown())):
            with atomic_open(os.path.join(self.out_dir, name), "w") as file:
                file.write(text)

    def markdown(self):
        lines = self.header_lines() + self.first_check_lines()
        for precision in ("fp32", "fp16"):
            lines += self.latency_table(precision)
        lines += self.training_table()
        lines += self.profile_tables()
        notes = [f"- {name}: {note}" for name, entry in self.data["models"].items() for note in entry["notes"]]
        if notes:
            lines += ["Notes (not counted as failures):"] + notes + [""]
        if self.data.get("refused"):
            lines += [f"Refused to run: {self.data['refused']}", ""]
        lines.append("Result: " + ("PASSED, every check" if self.data["passed"] else "FAILED"))
        lines += [f"- {failure}" for failure in self.data["failures"]]
        return "\n".join(lines) + "\n"

    def first_check_lines(self):
        """What a first GPU run most likely trips on (run first), one line each."""
        checks = self.data.get("first_checks") or {}
        lines = [f"- {what}: {'passed' if c['passed'] else 'FAILED'}"
                 + (f", max |diff| {c['max_abs_diff']:.1e}" if "max_abs_diff" in c else "")
                 + (f", losses {', '.join(f'{v:.4f}' for v in c['losses'])}" if c.get("losses") else "")
                 + (f" ({'; '.join(c['errors'])})" if c.get("errors") else "") for what, c in checks.items()]
        lines += [f"- {error}" for error in self.data.get("first_check_errors") or []]
        return ["First checks (what a first GPU run most likely trips on):"] + lines + [""] if lines else []

    def header_lines(self):
        """What was run, where and how, before the tables."""
        env, s = self.data["environment"], self.settings
        jittor, official = env.get("jittor", {}), self.data["official"] or {}
        pytorch = self.data["official_status"]
        if official.get("torch"):
            pytorch = f"{official['torch']} (cuDNN {official['cudnn']}, cudnn.benchmark, TF32 {official['tf32']})"
        return [f"# GPU check ({self.data['mode']}), {self.data['started']}, {self.data.get('elapsed_s', 0)} s", "",
                f"- Device: {jittor.get('device', '?')}; Jittor {jittor.get('jittor', '?')}, "
                f"CUDA {jittor.get('cuda', '-')}, cuDNN {jittor.get('cudnn', '-')}, "
                f"conv ops {', '.join(jittor.get('conv_ops', [])) or '?'}, cutt loaded: {jittor.get('cutt', '?')}"
                + (f" ({env['cutt']})" if env.get("cutt") else ""),
                f"- PyTorch: {pytorch}",
                f"- Jittor import {env.get('jittor_import_s', '?')} s (on a fresh machine: compiling its core)",
                f"- Checks: {self.criteria}",
                f"- Latency: {dims(s.latency_size)}, eval, no_grad, at least {s.warmup} warm-up runs, until one "
                f"compiles no op, then the median of {s.iters} synced runs with Jittor's parallel compiler off, TF32 {'on' if s.tf32 else 'off'}; ratio = Jittor / PyTorch "
                "(below 1: Jittor faster). 'first fwd' is the first forward, mostly JIT compilation.", ""]

    def latency_table(self, precision):
        header = ["model"]
        if precision == "fp32":
            header += ["ops off the GPU", "max abs diff vs CPU", "vs official", "loss step 1 -> 3", "AMP loss 1 -> 3", "argmax agree",
                       "first fwd s"]
        for batch in self.settings.batches:
            header += [f"Jittor b{batch} ms", f"PyTorch b{batch} ms", f"ratio b{batch}"]
        rows = []
        for name, entry in self.data["models"].items():
            latency = {(r["precision"], r["batch"]): r for r in entry["latency"]}
            if precision == "fp16" and not any(p == "fp16" for p, _ in latency):
                continue
            cells = [name]
            if precision == "fp32":
                losses, amp = entry.get("losses") or [], entry.get("amp_losses") or []
                cells += [entry.get("cpu_only_ops", "-"), fmt(entry.get("max_abs_diff_vs_cpu"), ".1e"),
                          fmt(entry.get("max_abs_diff_vs_official"), ".1e"),
                          f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "-",
                          f"{amp[0]:.4f} -> {amp[-1]:.4f}" if amp else "-",
                          fmt(entry.get("argmax_agreement"), ".4f"), fmt(entry.get("first_forward_s"), ".1f")]
            for batch in self.settings.batches:
                row = latency.get((precision, batch), {})
                cells += [fmt(row.get(key), ".2f") for key in ("jittor_ms", "pytorch_ms", "ratio")]
            rows.append(cells)
        if not rows:
            return []
        title = ("Correctness and fp32 latency" if precision == "fp32"
                 else "fp16 latency (Jittor precision.to_float16 / torch .half())")
        return markdown_table(title, header, rows)

    def training_table(self):
        """fp32 training at the official batch and crop: images/s and peak memory, both frameworks."""
        rows = []
        for name, entry in self.data["models"].items():
            ours, theirs = entry.get("train_speed") or {}, entry.get("official_train_speed") or {}
            if not ours and not theirs:
                continue
            size = dims((ours["batch"], ours["height"], ours["width"])) if ours else "-"
            ratio = (ours["jittor_images_per_s"] / theirs["images_per_s"]
                     if ours and theirs.get("images_per_s") else None)
            rows.append([name, size, fmt(ours.get("jittor_images_per_s"), ".2f"),
                         fmt(theirs.get("images_per_s"), ".2f"), fmt(ratio, ".2f"),
                         fmt(ours.get("jittor_peak_gib"), ".1f"), fmt(theirs.get("peak_gib"), ".1f")])
        if not rows:
            return []
        header = ["model", "batch x crop", "Jittor images/s", "PyTorch images/s", "Jittor / PyTorch",
                  "Jittor peak GiB", "PyTorch peak GiB"]
        return markdown_table("fp32 training at the official batch and crop (AdamW step, median of 3 after 2)",
                              header, rows)

    def profile_tables(self):
        """The slowest ops of one profiled eval forward per profiled model (Jittor's profiler)."""
        lines = []
        for name, entry in self.data["models"].items():
            profile = entry.get("op_profile")
            if not profile:
                continue
            rows = [[f"{row['ms']:.2f}", f"{row['share']:.1%}", row["count"], row["op"]] for row in profile["top"]]
            lines += markdown_table(
                f"{name}: slowest ops of one eval forward at {dims(profile['shape'])} ({profile['wall_ms']:.1f} ms "
                f"wall under the profiler, {profile['op_ms']:.1f} ms in ops)", ["ms", "share", "count", "op"], rows)
        return lines
