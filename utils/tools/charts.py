"""The README's two charts, drawn with matplotlib from the JSON the comparison tools write.

    python -m utils.tools.charts training runs.json docs/training_vs_official.png   # train_vs_official.py
    python -m utils.tools.charts speed speed.jsonl docs/speed_vs_official.png       # speed_vs_official.py

Training: per model a column, mIoU against epoch on top and training loss below, one colour per
framework, a thin line per seed, the mean bold with a band of +-1 standard deviation over the seeds,
the 2-process Jittor run dashed; a last row with the per-step losses of the run pair that shares
every random draw. Speed: per mode (inference, training) the median milliseconds of both frameworks
for every model, one pair of bars per device the rows were measured on.
"""
import argparse
import json
import os
import sys
import textwrap

import numpy as np

COLOURS = {"jittor": "tab:red", "pytorch": "tab:blue"}
LABELS = {"jittor": "Jittor (this port)", "pytorch": "PyTorch (official)"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def stamp(rows):
    """'date, machine, commit' of the rows, each field listing its distinct values in the rows' order
    (more than three: the first and the last, and how many)."""
    fields = [list(dict.fromkeys(str(row.get(key, "?")) for row in rows)) for key in ("date", "machine", "commit")]
    return ", ".join("/".join(values) if len(values) <= 3 else f"{values[0]} .. {values[-1]} ({len(values)} {key}s)"
                     for key, values in zip(("date", "machine", "commit"), fields))


# ----------------------------------------------------------------------------------- Chart 1

def draw_training(results, path):
    """Chart 1 from train_vs_official.py's results; returns the figure's models."""
    from utils.tools.train_vs_official import run_name, steps_equal, summary

    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    runs = results["runs"]
    models = list(dict.fromkeys(run["model"] for run in runs.values()))
    if not models:
        raise ValueError("no runs to draw")
    figure, axes = plt.subplots(3, len(models), figsize=(6.5 * len(models), 11), squeeze=False)
    for column, model in enumerate(models):
        top, middle, bottom = axes[:, column]
        for framework in ("jittor", "pytorch"):
            seeds = [run for run in runs.values() if run["model"] == model and run["framework"] == framework
                     and not run["shared"] and run["processes"] == 1]
            for ax, key in ((top, "miou"), (middle, "loss")):
                curves = np.array([[epoch[key] for epoch in run["epochs"]] for run in seeds])
                if not len(curves):
                    continue
                epochs = np.arange(1, curves.shape[1] + 1)
                for curve in curves:
                    ax.plot(epochs, curve, color=COLOURS[framework], linewidth=0.6, alpha=0.5)
                mean, spread = curves.mean(0), curves.std(0)
                ax.plot(epochs, mean, color=COLOURS[framework], linewidth=2.5,
                        label=f"{LABELS[framework]}, mean of {len(curves)} seeds")
                ax.fill_between(epochs, mean - spread, mean + spread, color=COLOURS[framework], alpha=0.15)
        two = runs.get(run_name(model, "jittor", 0, processes=2))
        if two:
            for ax, key in ((top, "miou"), (middle, "loss")):
                values = [epoch[key] for epoch in two["epochs"]]
                ax.plot(np.arange(1, len(values) + 1), values, color=COLOURS["jittor"], linestyle="--",
                        linewidth=1.5, label=f"Jittor, {two['processes']} processes (seed 0)")
        top.set(title=model, ylabel="test mIoU (%, single scale)")
        middle.set(xlabel="epoch", ylabel="training loss (epoch mean)")
        shared = [runs.get(run_name(model, f, 0, shared=True)) for f in ("jittor", "pytorch")]
        if all(shared):
            for framework, run in zip(("jittor", "pytorch"), shared):
                bottom.plot(np.arange(1, len(run["step_losses"]) + 1), run["step_losses"],
                            color=COLOURS[framework], linewidth=0.7, label=LABELS[framework])
            bottom.set(title=f"shared random draws (seed 0): losses within 0.1% for the first "
                             f"{steps_equal(*shared)} steps", xlabel="optimiser step", ylabel="training loss")
        else:
            bottom.set_axis_off()
        for ax in axes[:, column]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    width = 100 * len(models)  # characters of the small text across the figure
    lines = [part for line in summary(results) for part in textwrap.wrap(line, width, subsequent_indent="  ")]
    title = ("Same start, same batches: this Jittor port against the official PyTorch code on the synthetic set, "
             + stamp(list(runs.values())))
    figure.suptitle("\n".join(textwrap.wrap(title, width * 3 // 4)), fontsize=11)
    figure.text(0.01, 0.005, "\n".join(lines), fontsize=7, family="monospace", va="bottom")
    figure.tight_layout(rect=(0, 0.012 * (len(lines) + 1), 1, 0.96))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return models


# ----------------------------------------------------------------------------------- Chart 2

def speed_rows(path):
    """The rows of speed_vs_official.py's --json (one JSON object per line); later rows of the same
    (model, mode, size, device) replace earlier ones."""
    rows = {}
    with open(path) as file:
        for line in file:
            if line.strip():
                row = json.loads(line)
                rows[(row["config"], row["mode"], row["batch"], row["height"], row["width"],
                      row.get("device", "cpu"))] = row
    return list(rows.values())


def draw_speed(rows, path):
    """Chart 2: median ms per step, PyTorch and Jittor side by side for every model and device."""
    plt = pyplot()
    if not rows:
        raise ValueError("no rows to draw")
    modes = [mode for mode in ("infer", "train") if any(row["mode"] == mode for row in rows)]
    figure, axes = plt.subplots(len(modes), 1, figsize=(11, 4.2 * len(modes)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        mine = [row for row in rows if row["mode"] == mode]
        configs = list(dict.fromkeys(row["config"] for row in mine))
        devices = list(dict.fromkeys(row.get("device", "cpu") for row in mine))
        width = 0.8 / (2 * len(devices))
        for d, device in enumerate(devices):
            for f, (framework, key) in enumerate((("pytorch", "torch"), ("jittor", "jittor"))):
                offset = (2 * d + f + 0.5) * width - 0.4
                cells = {row["config"]: row for row in mine if row.get("device", "cpu") == device}
                xs = [i + offset for i, c in enumerate(configs) if c in cells]
                ms = [cells[c][key]["median_ms"] for c in configs if c in cells]
                bars = ax.bar(xs, ms, width, color=COLOURS[framework], alpha=1.0 - 0.45 * d,
                              label=f"{LABELS[framework]}, {device}")
                if framework == "jittor":
                    ratios = [f"{cells[c]['ratio']:.2f}x" for c in configs if c in cells]
                    ax.bar_label(bars, ratios, fontsize=7, padding=2)
        sizes = sorted({f"{row['batch']}x{row['height']}x{row['width']}" for row in mine})
        ax.set_xticks(range(len(configs)), configs, fontsize=8)
        ax.set_yscale("log")
        ax.set(ylabel="median ms per step (log)",
               title=f"{'inference' if mode == 'infer' else 'training step'} at {', '.join(sizes)} "
                     "(label: Jittor / PyTorch time)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    figure.suptitle(f"This Jittor port against the official PyTorch code: speed\n{stamp(rows)}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.tools.charts", description=__doc__.split("\n\n")[0])
    parser.add_argument("chart", choices=["training", "speed"])
    parser.add_argument("source", help="train_vs_official.py's --json, or speed_vs_official.py's --json")
    parser.add_argument("png", help="the picture to write")
    args = parser.parse_args(argv)
    if args.chart == "training":
        with open(args.source) as file:
            results = json.load(file)
        draw_training(results, args.png)
        from utils.tools.train_vs_official import summary

        print("\n".join(summary(results)))
    else:
        draw_speed(speed_rows(args.source), args.png)
    print(f"wrote {os.path.abspath(args.png)}")


if __name__ == "__main__":
    sys.exit(main())
