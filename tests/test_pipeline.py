"""End to end on a tiny synthetic data set: train, resume, evaluate, infer, and bad input.

One module-scoped training run (DFormer-Tiny, 48x64 images, 2 epochs of 5 iterations, each
step accumulating 2 micro-batches of 1 image) feeds the tests; the command-line tests run the real scripts in subprocesses.
"""
import json
import os
import pickle
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

TINY_CONFIG = """
from local_configs._base_ import make_config

C = make_config("Synthetic", "DFormer-Tiny", pretrained_model=None, dataset_path={data!r},
                num_train_imgs=8, num_eval_imgs=4, image_height=48, image_width=64, batch_size=2,
                nepochs=2, num_workers=0, checkpoint_start_epoch=0, warm_up_epoch=1,
                eval_crop_size=[48, 64], accum_steps=2)
"""


def run_script(script, *args):
    """Run utils/<script> like a user would; returns (exit code, stdout + stderr)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "utils", script), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from utils.entry import load_config
    from utils.synthetic.generate import ensure_synthetic_dataset

    folder = tmp_path_factory.mktemp("tiny")
    config = folder / "tiny_config.py"
    config.write_text(TINY_CONFIG.format(data=str(folder / "data")))
    ensure_synthetic_dataset(load_config(str(config)))
    return folder, str(config)


@pytest.fixture(scope="module")
def trained(tiny):
    from utils.engine.trainer import train
    from utils.train import parse_args

    folder, config = tiny
    run_dir = folder / "run"
    train(parse_args(["--config", config, "--run-dir", str(run_dir), "--no-progress"]))
    return run_dir


def read_state(path):
    with open(path, "rb") as file:
        return pickle.load(file)


def test_training_writes_checkpoints_and_logs(trained):
    state = read_state(trained / "last.pkl")
    assert state["epoch"] == 2 and state["miou"] is not None
    assert (trained / "best.pkl").exists()
    log = (trained / "train.log").read_text()
    assert "effective batch 2 = 1 process(es) x 1 x 2 accumulation steps" in log
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(trained / "tb"))


def test_resume_matches_uninterrupted_run(tiny, trained, monkeypatch):
    from utils.engine import trainer
    from utils.train import parse_args

    folder, config = tiny
    run_dir = folder / "interrupted"
    save = trainer.save_checkpoint

    def save_then_die(path, **state):  # the process is killed right after epoch 1's checkpoint
        save(path, **state)
        if path.endswith("last.pkl") and state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(parse_args(["--config", config, "--run-dir", str(run_dir), "--no-progress"]))
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    trainer.train(parse_args(["--config", config, "--run-dir", str(run_dir), "--no-progress",
                              "--continue_fpath", str(run_dir / "last.pkl")]))  # upstream's name for --resume
    resumed, uninterrupted = read_state(run_dir / "last.pkl"), read_state(trained / "last.pkl")
    assert resumed["epoch"] == 2
    for key, value in uninterrupted["model"].items():
        np.testing.assert_allclose(resumed["model"][key], value, atol=1e-6, err_msg=key)
    for moments in ("m", "v"):
        for ours, theirs in zip(resumed["optimizer"][moments], uninterrupted["optimizer"][moments]):
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, b, atol=1e-7)
    assert resumed["miou"] == uninterrupted["miou"]


def test_eval_cli_reproduces_training_validation(tiny, trained):
    folder, config = tiny
    out = folder / "eval.json"
    code, output = run_script("eval.py", "--config", config, "--checkpoint", trained / "last.pkl", "--json", out)
    assert code == 0, output
    assert json.loads(out.read_text())["mIoU"] == read_state(trained / "last.pkl")["miou"]
    assert "trivial baseline" in output and "ss (single scale)" in output
    assert re.search(r"\|\s+wall\s+\|", output)  # per-class table with class names


def test_infer_cli_on_split_and_on_user_folder_with_16bit_depth(tiny, trained, tmp_path):
    folder, config = tiny
    code, output = run_script("infer.py", "--config", config, "--checkpoint", trained / "last.pkl",
                              "--split", "test", "--output-dir", tmp_path / "split")
    assert code == 0, output
    names = [line.strip().split("/")[-1].rsplit(".", 1)[0] for line in open(folder / "data" / "test.txt")]
    for name in names:
        for suffix in (".png", "_overlay.png", "_panel.png"):
            assert (tmp_path / "split" / f"{name}{suffix}").exists()
    user = tmp_path / "user"
    (user / "RGB").mkdir(parents=True)
    (user / "Depth").mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(user / "RGB" / "room.jpg"), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    depth_mm = np.tile(np.linspace(800, 4000, 56, dtype=np.uint16), (40, 1))
    depth_mm[:5] = 0  # no measurement
    cv2.imwrite(str(user / "Depth" / "room.png"), depth_mm)
    code, output = run_script("infer.py", "--config", config, "--checkpoint", trained / "last.pkl",
                              "--input-dir", user, "--output-dir", tmp_path / "pred")
    assert code == 0, output
    label = Image.open(tmp_path / "pred" / "room.png")
    panel = cv2.imread(str(tmp_path / "pred" / "room_panel.png"))
    assert label.mode == "P" and np.array(label).shape == (40, 56) and np.array(label).max() < 13
    assert panel.shape[0] > 40 and panel.shape[1] >= 3 * 56  # RGB | depth | prediction, legend below
    assert (tmp_path / "pred" / "room_overlay.png").exists()


@pytest.mark.parametrize("case", ["dataset", "checkpoint", "non_image", "output"])
def test_bad_input_gives_one_clear_message(case, tiny, trained, tmp_path):
    folder, config = tiny
    checkpoint = trained / "last.pkl"
    if case == "dataset":
        args = ["eval.py", "--config", "local_configs.NYUDepthv2.DFormer_Tiny", "--checkpoint", checkpoint,
                "--dataset-dir", tmp_path / "nowhere"]
        expected = "dataset folder not found"
    elif case == "checkpoint":
        args = ["eval.py", "--config", "local_configs.NYUDepthv2.DFormer_Small", "--checkpoint", checkpoint,
                "--dataset-dir", folder / "data", "--set", "num_eval_imgs=None"]
        expected = "looks like DFormer-Tiny"
    elif case == "non_image":
        (tmp_path / "RGB").mkdir()
        (tmp_path / "Depth").mkdir()
        (tmp_path / "RGB" / "notes.txt").write_text("not an image")
        args = ["infer.py", "--config", config, "--checkpoint", checkpoint, "--input-dir", tmp_path,
                "--output-dir", tmp_path / "out"]
        expected = "notes.txt is not an image"
    else:
        blocker = tmp_path / "file"
        blocker.write_text("")
        args = ["infer.py", "--config", config, "--checkpoint", checkpoint, "--split", "test",
                "--output-dir", blocker / "out"]
        expected = "cannot write to output folder"
    code, output = run_script(*args)
    assert code == 2, output
    assert expected in output and "Traceback" not in output, output


def test_worker_processes_load_the_same_batches(tiny, trained):
    from utils.dataloader.dataset import RGBXDataset
    from utils.entry import load_config
    from utils.engine.trainer import seed_epoch

    C = load_config(tiny[1])
    batches = []
    for workers in (0, 2):
        dataset = RGBXDataset(C, "train", num_workers=workers)
        seed_epoch(C.seed, 3, dataset)
        batch = next(iter(dataset))
        batches.append({k: (v if k == "fn" else v.numpy()) for k, v in batch.items()})
        dataset.terminate()
    assert batches[0]["fn"] == batches[1]["fn"]
    for key in ("data", "modal_x", "label"):
        np.testing.assert_array_equal(batches[0][key], batches[1][key])


def test_nearby_seeds_draw_unrelated_streams():
    """Jittor seeded directly gives seeds 0 and 1 the same stream and seed 2 twice seed 1's values
    (mod 1): correlation 1.0 and about 0.46 over these draws. Through `seed_everything`, every pair
    of nearby run and epoch seeds (a negative one too) correlates like independent draws (|r| ~
    1/sqrt(20000) = 0.007; the bound is 7 of those), and one key reproduces its stream."""
    import itertools

    import jittor as jt
    from utils.engine.trainer import seed_everything

    def draws(*key):
        seed_everything(*key)
        return jt.rand(20000).numpy()

    keys = [(0,), (1,), (2,), (4,), (-1,), (0, 1), (0, 2), (1, 1), (2, 1)]
    streams = {key: draws(*key) for key in keys}
    for a, b in itertools.combinations(keys, 2):
        assert abs(np.corrcoef(streams[a], streams[b])[0, 1]) < 0.05, (a, b)
    np.testing.assert_array_equal(draws(2, 1), streams[(2, 1)])
