"""utils/tools/train_vs_official.py (Jittor side: 1 process, shared draws, 2 processes; JSON and
resume), its statistics, and utils/tools/charts.py. The PyTorch side needs the official checkout and
torch, which CI does not have."""
import json
import shutil

import matplotlib.image
import numpy as np
import pytest

from test_pipeline import TINY_CONFIG
from utils.errors import UserError
from utils.tools import charts, train_vs_official as tool


def tiny_config(folder):
    """4 training images in batches of 2 (3 steps an epoch, upstream's count), 4 test images."""
    config = folder / "tiny_config.py"
    config.write_text(TINY_CONFIG.format(data=str(folder / "data")).replace("num_train_imgs=8", "num_train_imgs=4"))
    return str(config)


def test_jittor_runs_are_recorded_and_not_run_again(tmp_path, capsys):
    assert shutil.which("mpirun"), "OpenMPI is needed (tests/run.sh installs it)"
    argv = ["--configs", tiny_config(tmp_path), "--seeds", "1", "--epochs", "1", "--frameworks", "jittor",
            "--json", str(tmp_path / "runs.json"), "--work-dir", str(tmp_path / "work")]
    tool.main(argv)
    results = json.loads((tmp_path / "runs.json").read_text())
    names = ["DFormer-Tiny/jittor/seed0", "DFormer-Tiny/jittor/shared", "DFormer-Tiny/jittor/seed0/np2"]
    assert sorted(results["runs"]) == sorted(names)
    for name in names:
        run = results["runs"][name]
        assert run["framework"] == "jittor" and run["seed"] == 0
        assert [epoch["epoch"] for epoch in run["epochs"]] == [1]
        assert 0.0 <= run["epochs"][0]["miou"] <= 100.0
        # from scratch over 13 classes the loss starts near ln(13) = 2.6; a wrong normalisation is far off
        assert len(run["step_losses"]) == 3 and all(0.5 < loss < 10 for loss in run["step_losses"])
        assert run["epochs"][0]["loss"] == pytest.approx(np.mean(run["step_losses"]), rel=1e-6)
        assert run["date"] and run["machine"] and run["commit"]
    assert results["runs"]["DFormer-Tiny/jittor/shared"]["shared"]
    assert results["runs"]["DFormer-Tiny/jittor/seed0/np2"]["processes"] == 2
    assert not (tmp_path / "work" / "DFormer-Tiny" / "seed0").exists()  # inputs removed once used
    capsys.readouterr()

    tool.main(argv)  # every run is in the JSON: nothing runs again
    assert "run DFormer-Tiny" not in capsys.readouterr().out
    assert json.loads((tmp_path / "runs.json").read_text())["runs"] == results["runs"]
    with pytest.raises(UserError, match="with 1 epochs, not 2"):
        tool.main(argv[:5] + ["2"] + argv[6:])


def test_a_torch_python_that_cannot_import_the_official_dependencies_is_refused_first(tmp_path):
    """Before any run: this suite's Python has no torch, timm, mmcv: one error naming the problem."""
    import sys

    argv = ["--configs", tiny_config(tmp_path), "--seeds", "1", "--epochs", "1", "--official-dir", str(tmp_path),
            "--torch-python", sys.executable, "--json", str(tmp_path / "runs.json"), "--work-dir", str(tmp_path / "w")]
    with pytest.raises(UserError, match=r"cannot import the official models' dependencies \(ModuleNotFoundError"):
        tool.main(argv)
    assert not (tmp_path / "runs.json").exists() and not (tmp_path / "w").exists()
    with pytest.raises(UserError, match="need --official-dir and --torch-python"):
        tool.main(argv[:6] + argv[10:])


def fake_run(model, framework, seed, mious, shared=False, processes=1, steps=None):
    epochs = [{"epoch": e, "loss": 2.0 / e, "miou": m} for e, m in enumerate(mious, 1)]
    return tool.run_name(model, framework, seed, shared, processes), dict(
        model=model, framework=framework, seed=seed, shared=shared, processes=processes, epochs=epochs,
        step_losses=steps or [2.0, 1.5, 1.2], date="2026-12-07", machine="test CPU", commit="abc1234")


def fake_results():
    """DFormer-Tiny: 4 seeds with final-mIoU differences 0.1, -0.2, 0.3, 0.0; a 2-process run; the
    shared pair, equal for 2 of 3 steps. DFormerv2-S: a first seed."""
    runs = []
    for seed, diff in enumerate([0.1, -0.2, 0.3, 0.0]):
        runs.append(fake_run("DFormer-Tiny", "pytorch", seed, [10.0, 20.0 + seed, 30.0 + seed]))
        runs.append(fake_run("DFormer-Tiny", "jittor", seed, [10.0, 20.0 + seed + diff, 30.0 + seed + diff]))
    runs.append(fake_run("DFormer-Tiny", "jittor", 0, [10.0, 21.0, 35.0], processes=2))
    runs.append(fake_run("DFormer-Tiny", "jittor", 0, [10, 20, 30], shared=True, steps=[2.0, 1.5, 1.2]))
    runs.append(fake_run("DFormer-Tiny", "pytorch", 0, [10, 20, 30], shared=True, steps=[2.0, 1.5001, 1.1]))
    runs.append(fake_run("DFormerv2_S", "jittor", 0, [12.0, 22.0]))
    runs.append(fake_run("DFormerv2_S", "pytorch", 0, [11.0, 21.0]))
    return {"runs": dict(runs)}


def test_summary_states_each_criterion():
    results = fake_results()
    # final mIoU = mean of the last 2 epochs; each seed's difference is its offset
    assert tool.paired_differences(results, "DFormer-Tiny") == pytest.approx({0: 0.1, 1: -0.2, 2: 0.3, 3: 0.0})
    # by hand: mean 0.05, sample sd 0.2082, t(0.95, 3 dof) = 2.3534, half-width 2.3534 * 0.2082 / 2
    mean, low, high = tool.t_interval([0.1, -0.2, 0.3, 0.0])
    assert mean == pytest.approx(0.05) and (low, high) == pytest.approx((0.05 - 0.24495, 0.05 + 0.24495), abs=1e-4)
    lines = tool.summary(results)
    assert any("DFormer-Tiny: final mIoU Jittor - PyTorch over 4 seeds" in line and "[-0.19, +0.29] inside" in line
               for line in lines), lines
    # 1-process Jittor finals 25.1 to 28.0, widened by 1.0; the 2-process run's (21 + 35) / 2 = 28
    assert any("2 processes final mIoU 28.00, inside" in line and "[24.10, 29.00]" in line for line in lines), lines
    assert any("within 0.1% for the first 2 of 3 steps" in line for line in lines), lines
    assert any("DFormerv2_S" in line and "needs 2 seeds" in line for line in lines), lines
    mean, low, high = tool.t_interval([2.0, -1.5, 0.5])
    assert low < -1 and high > 1  # noisy: not shown equivalent


def test_charts_draw(tmp_path):
    png = tmp_path / "training.png"
    assert charts.draw_training(fake_results(), png) == ["DFormer-Tiny", "DFormerv2_S"]
    height, width = matplotlib.image.imread(png).shape[:2]
    assert (height, width) == (1210, 1430)  # 3 rows x 2 models at the chart's size and dpi

    rows = []
    for device, scale in (("CPU", 1.0), ("NVIDIA H100", 0.05)):
        for config in ("DFormer_Tiny", "DFormer_Large"):
            for mode, batch, size in (("infer", 1, (480, 640)), ("train", 8, (120, 160))):
                rows.append(dict(config=config, mode=mode, batch=batch, height=size[0], width=size[1], device=device,
                                 torch={"median_ms": 100 * scale}, jittor={"median_ms": 90 * scale}, ratio=0.9,
                                 date="2026-12-07", machine="test CPU", commit="abc1234"))
    source = tmp_path / "speed.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in [dict(rows[0], ratio=5.0)] + rows))
    assert len(charts.speed_rows(source)) == len(rows)  # a later row replaces an earlier one
    charts.main(["speed", str(source), str(tmp_path / "speed.png")])
    assert matplotlib.image.imread(tmp_path / "speed.png").shape[:2] == (924, 1210)
