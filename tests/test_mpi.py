"""Two MPI processes (OpenMPI, CPU): disjoint shares of each global batch, identical weights."""
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np

from conftest import ROOT
from test_pipeline import TINY_CONFIG

# 1 vs 2 processes, 3 steps (BatchNorm synchronised): two float32 runs of the same maths. Measured
# (AMD EPYC, docs/testing.md): losses 0, 7e-7, 1.9e-5 apart; update vectors 1.2e-3; BatchNorm
# statistics 3.2e-5. Each float32 run's update is ~1e-3 off float64 (AdamW turns rounding into
# steps where gradients are near 0), and a decode-head ReLU flip adds up to 3e-3 (the official
# float32 runs behind tests/fixtures/training_parity.npz at this size: at most 3.8e-3 with flips),
# so two runs differ by at most ~1e-2: the bound is 2x that, and 10x the measured losses and
# statistics. A missing weight broadcast or gradient all-reduce moves the update by ~100%.
LOSS_RTOL, UPDATE_ERROR, STATS_ERROR = 2e-4, 2e-2, 1e-3
# 1 vs 2 accumulation steps and processes, BatchNorm in eval mode: the whole gradient vector and
# the classifier's. Measured: 3.8e-7 to 4.0e-7 and 1.6e-7 to 1.9e-7. A flip moves the gradients
# upstream of it by 2e-4 to 2e-3, but not the classifier's (it lies after every ReLU; a flip
# changes a value by less than its rounding): the classifier's bound is 10x the measured rounding
# and fails any accumulation or normalisation error above 2e-6; the whole vector's fails one of 1%.
CLASSIFIER = ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]
ACCUMULATED_CLASSIFIER_ERROR, ACCUMULATED_GRADIENT_ERROR = 2e-6, 1e-2


def generate_data(config):
    """The synthetic set of `config`, generated as train.sh does (building a dataset writes nothing)."""
    subprocess.run([sys.executable, "-m", "utils.synthetic", "--config", str(config)], check=True, cwd=ROOT,
                   capture_output=True)


def test_two_ranks_share_batches_and_stay_in_sync(tmp_path):
    assert shutil.which("mpirun"), "OpenMPI is needed (tests/run.sh installs it)"
    config = tmp_path / "tiny_config.py"
    # 5 test images: Jittor's split of the uneven last eval batch gives both ranks the same image
    config.write_text(TINY_CONFIG.format(data=str(tmp_path / "data")).replace("batch_size=2", "batch_size=4")
                      .replace("num_eval_imgs=4", "num_eval_imgs=5"))
    generate_data(config)
    root_flag = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    done = subprocess.run(["mpirun", "-np", "2", *root_flag, "--oversubscribe", sys.executable,
                           os.path.join(ROOT, "tests", "mpi_worker.py"), str(config), str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for batch0, batch1 in zip(ranks[0]["names"], ranks[1]["names"]):
        assert len(batch0) == len(batch1) == 2  # global batch 4 = 2 ranks x 2
        assert not set(batch0) & set(batch1), (batch0, batch1)
    assert ranks[0]["weight_sum"] == ranks[1]["weight_sum"]
    np.testing.assert_array_equal(ranks[0]["weight_head"], ranks[1]["weight_head"])
    np.testing.assert_array_equal(ranks[0]["hist"], ranks[1]["hist"])  # confusion matrices summed over ranks
    assert np.sum(ranks[0]["hist"]) == ranks[0]["labelled_pixels"]  # every test image counted once


def test_one_and_two_processes_and_accumulation_take_the_same_steps(tmp_path):
    """Same global batch of 4: 1 process vs 2 (mpirun), and 1 vs 2 accumulation steps.

    Every process starts from process 0's weights, BatchNorm statistics are synchronised and the
    loss is normalised by the labelled pixels of the whole step, so 3 training steps agree to
    float32 noise; with BatchNorm in eval mode, accumulated gradients equal full-batch ones (the
    bounds and their measurements: the module constants).
    """
    assert shutil.which("mpirun"), "OpenMPI is needed (tests/run.sh installs it)"
    config = tmp_path / "tiny_config.py"
    config.write_text(TINY_CONFIG.format(data=str(tmp_path / "data")).replace("batch_size=2", "batch_size=4"))
    generate_data(config)
    worker = [sys.executable, os.path.join(ROOT, "tests", "steps_worker.py"), str(config), str(tmp_path)]
    root_flag = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    for command in (worker, ["mpirun", "-np", "2", *root_flag, "--oversubscribe", *worker]):
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two, two_rank1 = (np.load(tmp_path / f"{name}.npz") for name in ("1_rank0", "2_rank0", "2_rank1"))

    def update(run):
        keys = sorted(k[len("train/final/"):] for k in run.files if k.startswith("train/final/"))
        return np.concatenate([(run[f"train/final/{k}"] - run[f"train/initial/{k}"]).ravel() for k in keys])

    for key in (k for k in one.files if k.startswith("train/")):  # process 0's weights everywhere
        np.testing.assert_array_equal(two[key], two_rank1[key], err_msg=key)
    for key in (k for k in one.files if k.startswith("train/initial/")):
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
    # step 1 agrees to rounding; then AdamW amplifies float32 noise (module constants above)
    print(f"losses, 1 process {one['train/losses']}, 2 processes {two['train/losses']}")
    np.testing.assert_allclose(two["train/losses"][0], one["train/losses"][0], rtol=1e-6)
    np.testing.assert_allclose(two["train/losses"], one["train/losses"], rtol=LOSS_RTOL)
    error = np.linalg.norm(update(two) - update(one)) / np.linalg.norm(update(one))
    print(f"update after 3 steps, 2 processes vs 1: rel. error {error:.2e}")
    assert error < UPDATE_ERROR
    stats = [k for k in one.files if "running_" in k and k.startswith("train/final/")]
    error = np.linalg.norm(np.concatenate([two[k] - one[k] for k in stats])) / \
        np.linalg.norm(np.concatenate([one[k] for k in stats]))
    print(f"BatchNorm running statistics after 3 steps, 2 processes vs 1: rel. error {error:.2e}")
    assert error < STATS_ERROR

    def grads(run, accum):
        prefix = f"accum{accum}/grad/"
        return {k[len(prefix):]: run[k].ravel() for k in run.files if k.startswith(prefix)}

    def error(a, b, names):
        return np.linalg.norm(np.concatenate([a[n] - b[n] for n in names])) / \
            np.linalg.norm(np.concatenate([b[n] for n in names]))

    reference = grads(one, 1)
    for run, accum in ((one, 2), (two, 1), (two, 2)):
        other = grads(run, accum)
        assert other.keys() == reference.keys()
        whole, classifier = error(other, reference, sorted(reference)), error(other, reference, CLASSIFIER)
        print(f"BN eval, gradient with {accum} accumulation step(s) on {run is two and 2 or 1} process(es): "
              f"rel. error vs 1 process full batch {whole:.2e}, classifier {classifier:.2e}")
        assert classifier < ACCUMULATED_CLASSIFIER_ERROR and whole < ACCUMULATED_GRADIENT_ERROR


ONE_STEP_CONFIG = """
from local_configs._base_ import make_config

C = make_config("Synthetic", "DFormer-Tiny", pretrained_model=None, dataset_path={data!r},
                num_train_imgs=1, num_eval_imgs=2, image_height=48, image_width=64, batch_size=2,
                nepochs=1, num_workers=0, warm_up_epoch=1, eval_crop_size=[48, 64],
                drop_path_rate=0.0, lr=0.0)  # 1 // 2 + 1 = 1 iteration
"""


def test_train_entry_point_starts_alike_with_one_and_two_processes(tmp_path):
    """`utils/train.py` itself, one optimiser step, 1 process and 2 (mpirun), the same seed.

    lr 0 keeps every weight at its initial value, so last.pkl holds the initial weights; the step
    still runs (forward, loss, backward, AdamW moments, BatchNorm statistics). The initial weights
    must be identical. Of the step, what the seed and the data alone decide must agree to float32
    rounding: the BatchNorm statistics of the backbone and of the decode head's `squeeze` (the
    global batch, synchronised over the processes). The rest depends on the decode head's random
    draws (NMF bases, dropout), which each process makes for its own images, as upstream's DDP
    processes do; with equal draws the whole step agrees (the test above). With `--no-syncbn`
    each process normalises with its own images' statistics, as upstream's plain BatchNorm2d.
    """
    assert shutil.which("mpirun"), "OpenMPI is needed (tests/run.sh installs it)"
    config = tmp_path / "one_step_config.py"
    config.write_text(ONE_STEP_CONFIG.format(data=str(tmp_path / "data")))
    generate_data(config)
    train = [sys.executable, os.path.join(ROOT, "utils", "train.py"), "--config", str(config), "--no-progress"]
    mpirun = ["mpirun", "-np", "2", *(["--allow-run-as-root"] if os.geteuid() == 0 else []), "--oversubscribe"]
    runs = {"1": train, "2": [*mpirun, *train], "2 --no-syncbn": [*mpirun, *train, "--no-syncbn"]}
    states = {}
    for tag, command in runs.items():
        run_dir = tmp_path / tag.replace(" ", "")
        done = subprocess.run([*command, "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        processes = int(tag[0])
        assert f"effective batch 2 = {processes} process(es) x {2 // processes}" in (run_dir / "train.log").read_text()
        with open(run_dir / "last.pkl", "rb") as file:
            states[tag] = pickle.load(file)["model"]
    one = states["1"]
    weights = [k for k in one if "running_" not in k]
    random_draws = ("decode_head.hamburger.", "decode_head.align.")  # BatchNorms after the NMF
    stats = [k for k in one if "running_" in k and not k.startswith(random_draws)]
    for tag in ("2", "2 --no-syncbn"):
        assert states[tag].keys() == one.keys()
        differing = [k for k in weights if not np.array_equal(one[k], states[tag][k])]
        error = max(np.abs(states[tag][k] - one[k]).max() / max(np.abs(one[k]).max(), 1e-12) for k in stats)
        print(f"{tag} processes vs 1: initial weights {len(weights) - len(differing)} of {len(weights)} tensors "
              f"identical (differing: {differing}); BatchNorm statistics after the step ({len(stats)} tensors), "
              f"max rel. difference {error:.1e}")
        assert not differing
        assert error < 1e-5 if tag == "2" else error > 1e-2  # the global batch's, or process 0's own image's
