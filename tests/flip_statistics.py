"""Flip statistics: how often a float32 training step puts a decode-head ReLU input on the other
side of 0 than float64 does, this port against the official code, over many batches.

    PATH=/path/to/jittor-venv/bin:$PATH python tests/flip_statistics.py --official PATH/TO/DFormer \\
        --torch-python PATH/TO/torch-venv/bin/python [--batches 50] [--models DFormer-Tiny,DFormerv2-Small] \\
        [--save-reference FILE | --reference FILE]

Runs the 'flips' section of `make_official_fixtures.py` with the torch Python (upstream's step 1
on N seeded training batches per model, of the training fixture's shape, float64 and float32, the model built as its
train.py builds it), then this port's step 1 on the same batches, stand-in weights and NMF bases
(training mode, drop path 0, dropout off), and prints for each model:
- the batches whose step-1 gradient error against float64 exceeds FLIP_ERROR (a flip), for each
  side with a 95% Wilson interval, and McNemar's exact test on the pairs (both sides ran the same
  batches);
- per ReLU input (`squeeze`, `ham_in`, `x + ham_out`, `align`), the elements on the other side of
  0 than in float64, summed over the batches, and the exact test of equal rates (given the total,
  the count of one side is binomial(total, 1/2) when both rates are equal), and the median
  relative L2 error of that input against float64 (a sample), with the batches where ours is the
  larger (sign test).
"""
import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models.jittor_env import apply_defaults  # noqa: E402

apply_defaults()  # Jittor's environment defaults, before Jittor is imported

from make_official_fixtures import (RELU_SITES, SITE_SAMPLES, STEP1_SAMPLES, TRAIN_MODELS,  # noqa: E402
                                    relative_error, sample_index, training_batch, wrong_side)

FLIP_ERROR = 1e-4  # step-1 gradient error vs float64 that marks a ReLU flip; rounding alone gives 2e-6 to 9e-6


def official_flips(official, torch_python, models, batches, out_dir):
    """Run the generator's 'flips' section; returns its arrays."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "make_official_fixtures.py")
    subprocess.run([torch_python, script, "--official", official, "--only", "flips", "--out", out_dir,
                    "--training-models", ",".join(models), "--flip-batches", str(batches)], check=True)
    return np.load(os.path.join(out_dir, "flip_statistics.npz"))


def our_step1(model, C, seed, params, record):
    """Our step-1 gradients of `params` (concatenated) and decode-head ReLU inputs on batch `seed`."""
    import jittor as jt

    from utils.engine.loss import cross_entropy

    rgb, depth, label, bases = training_batch(seed)
    model.decode_head.hamburger.ham.fixed_raw_bases = bases[0]
    loss = cross_entropy(model(jt.array(rgb), jt.array(depth)), jt.array(label.astype(np.int32)))
    grads = np.concatenate([g.numpy().ravel().astype(np.float64) for g in jt.grad(loss, params)])
    return grads, {site: record[site].numpy().ravel() for site in RELU_SITES}


def wilson(count, total):
    from scipy.stats import binomtest

    interval = binomtest(count, total).proportion_ci(method="wilson")
    return f"{count}/{total} = {count / total:.0%} [{interval.low:.0%}, {interval.high:.0%}]"


def exact_equal_rates(ours, theirs):
    """Two-sided p of `ours` among `ours + theirs` events under equal rates (1.0 when there are none)."""
    from scipy.stats import binomtest

    return binomtest(ours, ours + theirs, 0.5).pvalue if ours + theirs else 1.0


def report(name, reference, ours_flip, ours_wrong, ours_error, flip_error):
    seeds = reference[f"{name}/seeds"]
    official_flip = [float(reference[f"{name}/{seed}/fp32/step1_error"]) > flip_error for seed in seeds]
    only_ours = sum(a and not b for a, b in zip(ours_flip, official_flip))
    only_official = sum(b and not a for a, b in zip(ours_flip, official_flip))
    print(f"\n{name}, {len(seeds)} batches (seeds {seeds[0]}-{seeds[-1]}), step-1 gradient error above {flip_error:g}:")
    print(f"  batches with a flip: ours {wilson(sum(ours_flip), len(seeds))}, "
          f"official float32 {wilson(sum(official_flip), len(seeds))} (95% Wilson)")
    print(f"  paired: both {sum(a and b for a, b in zip(ours_flip, official_flip))}, only ours {only_ours}, "
          f"only official {only_official}; McNemar exact p = {exact_equal_rates(only_ours, only_official):.2f}")
    print("  elements on the wrong side of 0 (all batches), ours vs official float32, exact test of equal rates:")
    for site in RELU_SITES:
        mine = sum(ours_wrong[site])
        theirs = sum(int(reference[f"{name}/{seed}/{site}/fp32/wrong_side"]) for seed in seeds)
        near = sum(reference[f"{name}/{seed}/{site}/index"].size for seed in seeds)
        print(f"    {site:12s} {mine:4d} vs {theirs:4d} (of {near} within 1e-3 RMS of 0), "
              f"p = {exact_equal_rates(mine, theirs):.2f}")
    print("  relative L2 error of the ReLU inputs against float64, median over the batches, ours vs official "
          "float32; batches where ours is larger, sign test:")
    for site in RELU_SITES:
        theirs = np.array([float(reference[f"{name}/{seed}/{site}/fp32/error"]) for seed in seeds])
        larger = int(np.sum(np.array(ours_error[site]) > theirs))
        print(f"    {site:12s} {np.median(ours_error[site]):.2e} vs {np.median(theirs):.2e}, ours larger on "
              f"{larger}/{len(seeds)}, p = {exact_equal_rates(larger, len(seeds) - larger):.2g}")


def main():
    from test_training_parity import hook_relu_inputs, synthetic_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="checkout of VCIP-RGBD/DFormer (814799b)")
    parser.add_argument("--torch-python", required=True, help="a Python with torch, mmcv-lite, mmengine, timm")
    parser.add_argument("--batches", type=int, default=50, help="batches per model")
    parser.add_argument("--models", default=",".join(TRAIN_MODELS))
    parser.add_argument("--reference", help="a flip_statistics.npz written before (skips the official run)")
    parser.add_argument("--save-reference", help="keep the official run's flip_statistics.npz here")
    args = parser.parse_args()
    models = args.models.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        if args.reference:
            reference = np.load(args.reference)
        else:
            reference = official_flips(args.official, args.torch_python, models, args.batches, scratch)
            if args.save_reference:
                shutil.copyfile(os.path.join(scratch, "flip_statistics.npz"), args.save_reference)
        for name in models:
            model, C = synthetic_model(name, pathlib.Path(scratch), drop_path_rate=0.0)
            model.decode_head.dropout.p = 0.0
            model.train()
            state = model.state_dict()
            params = [state[n] for n in reference[f"{name}/param_names"]]  # upstream's order
            start = {k: v.numpy().copy() for k, v in state.items()}
            record, flips = {}, []
            wrong, site_error = {site: [] for site in RELU_SITES}, {site: [] for site in RELU_SITES}
            hook_relu_inputs(model.decode_head, record)
            for seed in reference[f"{name}/seeds"]:
                model.load_state_dict(start)  # BatchNorm running statistics as built
                grads, sites = our_step1(model, C, int(seed), params, record)
                error = relative_error(grads[sample_index(grads.size, STEP1_SAMPLES, f"{name}/step1")],
                                       reference[f"{name}/{seed}/fp64/step1_sample"])
                flips.append(error > FLIP_ERROR)
                for site in RELU_SITES:
                    near = reference[f"{name}/{seed}/{site}/index"]
                    wrong[site].append(wrong_side(sites[site][near], reference[f"{name}/{seed}/{site}/fp64"]))
                    at = sample_index(sites[site].size, SITE_SAMPLES, f"{name}/{site}")
                    site_error[site].append(relative_error(sites[site][at], reference[f"{name}/{seed}/{site}/sample"]))
                print(f"{name} batch {seed}: step-1 gradient error {error:.2e} (official float32 "
                      f"{float(reference[f'{name}/{seed}/fp32/step1_error']):.2e}); wrong side: "
                      + ", ".join(f"{site} {wrong[site][-1]}" for site in RELU_SITES), flush=True)
            report(name, reference, flips, wrong, site_error, FLIP_ERROR)


if __name__ == "__main__":
    main()
