"""The GPU check script's pipeline, run on the CPU (`--cpu-smoke`), as CI can without a GPU.

`python -m utils.tools.gpu_check --cpu-smoke` runs everything the GPU run does (CPU reference in a
subprocess, eval logits, argmax, training steps, latency, JSON/Markdown report) at 32x48. Here
both sides are the CPU, so the logits must agree to rounding and the argmax everywhere.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from utils.tools.gpu_check import CHECK_MODELS, resolve_models

SMOKE_MODELS = ["DFormer-Tiny", "DFormerv2-Small"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    command = [sys.executable, "-m", "utils.tools.gpu_check", "--cpu-smoke", "--models", "DFormer-Tiny,DFormerv2-S",
               "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    return done, out


def test_smoke_run_passes(smoke):
    done, out = smoke
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.md"]  # no stray temporary files
    assert "Result: PASSED" in (out / "gpu_check.md").read_text()


def test_smoke_report_fields(smoke):
    _, out = smoke
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["passed"] and report["failures"] == []
    assert report["checks"] == {"environment": True, "first_checks": True}
    assert len(report["first_checks"]) == 3 and all(c["passed"] for c in report["first_checks"].values())
    assert report["environment"]["jittor"]["mode"] == "CPU"
    assert list(report["models"]) == SMOKE_MODELS
    for name, entry in report["models"].items():
        assert entry["config"] == f"local_configs.NYUDepthv2.{CHECK_MODELS[name]}"
        assert entry["errors"] == [], name
        assert entry["checks"] == {"gpu_graph": True, "loss_decreased": True, "diff_vs_cpu": True, "argmax": True,
                                   "latency": True}
        assert entry["cpu_only_ops"] == "none"
        profile = entry["op_profile"]  # both smoke models are profiled
        assert profile["shape"] == [1, 32, 48] and 0 < profile["op_ms"] and 0 < profile["wall_ms"]
        assert len(profile["top"]) == 15 and all(row["ms"] >= 0 and row["count"] > 0 for row in profile["top"])
        assert [row["ms"] for row in profile["top"]] == sorted((row["ms"] for row in profile["top"]), reverse=True)
        assert profile["op_kinds"]["code"] > 0  # the CPU kernels run in the smoke test's profile
        assert entry["max_abs_diff_vs_cpu"] <= 1e-5
        assert entry["argmax_agreement"] == 1.0
        assert len(entry["losses"]) == 3 and entry["loss_after"] < entry["loss_before"]
        assert entry["loss_before"] == entry["losses"][0] and 0 < entry["loss_before"] < 20
        assert entry["first_forward_s"] > 0
        assert [(row["precision"], row["batch"]) for row in entry["latency"]] == [("fp32", 1), ("fp32", 2)]
        for row in entry["latency"]:
            assert row["jittor_ms"] > 0 and row["pytorch_ms"] is None and row["ratio"] is None


def test_model_names():
    assert resolve_models("all") == list(CHECK_MODELS)
    assert resolve_models("DFormer-Tiny, dformerv2-s,DFormerv2_L,DFormer-Tiny") == \
        ["DFormer-Tiny", "DFormerv2-Small", "DFormerv2-Large"]
    with pytest.raises(ValueError, match="unknown model"):
        resolve_models("DFormer-Huge")


def test_refuses_without_gpu_outside_smoke_mode(tmp_path):
    """On a machine where Jittor runs on the CPU, the GPU mode stops at once with exit code 2."""
    env = dict(os.environ, nvcc_path="")
    command = [sys.executable, "-m", "utils.tools.gpu_check", "--models", "DFormer-Tiny", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--cpu-smoke" in done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["checks"] == {"environment": False} and not report["passed"]


def test_report_tables(tmp_path):
    """The Markdown report carries the measured numbers, ratios and failures (no Jittor needed)."""
    from utils.tools.gpu_check import Settings, parse_args
    from utils.tools.gpu_report import Report

    settings = Settings.from_args(parse_args(["--models", "DFormer-Tiny,DFormer-Large"]))
    report = Report(str(tmp_path), settings, {"DFormer-Tiny": "cfg.T", "DFormer-Large": "cfg.L"}, time.time(),
                    "criteria")
    tiny = report.model("DFormer-Tiny")
    tiny.update(cpu_only_ops="none", op_profile={
        "shape": [1, 480, 640], "wall_ms": 30.0, "op_ms": 25.0, "op_kinds": {"fused": 3},
        "top": [{"op": "cudnn_conv", "count": 66, "ms": 12.5, "share": 0.5}]}, losses=[3.1, 3.0, 2.9], amp_losses=[2.9, 2.8, 2.75], max_abs_diff_vs_cpu=1.5e-4,
                argmax_agreement=0.999, first_forward_s=12.0,
                train_speed={"batch": 8, "height": 480, "width": 640, "jittor_images_per_s": 40.0,
                             "jittor_peak_gib": 12.3},
                official_train_speed={"images_per_s": 50.0, "peak_gib": 10.0})
    tiny["checks"].update(loss_decreased=True, amp_finite=True)
    report.set_latency("DFormer-Tiny", "fp32", 1, jittor_ms=5.0)
    report.set_latency("DFormer-Tiny", "fp32", 1, pytorch_ms=4.0)
    report.save()
    text = (tmp_path / "gpu_check.md").read_text()
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| DFormer-Tiny")]
    assert rows[0] == ["DFormer-Tiny", "none", "1.5e-04", "-", "3.1000 -> 2.9000", "2.9000 -> 2.7500", "0.9990", "12.0",
                       "5.00", "4.00", "1.25", "-", "-", "-"]
    assert rows[1] == ["DFormer-Tiny", "8x480x640", "40.00", "50.00", "0.80", "12.3", "10.0"]
    assert text.rstrip().endswith("- DFormer-Large: not checked")
    assert "## DFormer-Tiny: slowest ops of one eval forward at 1x480x640 (30.0 ms wall" in text
    assert ["12.50", "50.0%", "66", "cudnn_conv"] in [[cell.strip() for cell in line.strip("|").split("|")]
                                                     for line in text.splitlines()]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["models"]["DFormer-Tiny"]["latency"] == [
        {"precision": "fp32", "batch": 1, "jittor_ms": 5.0, "pytorch_ms": 4.0, "ratio": 1.25}]
    assert data["failures"] == ["DFormer-Large: not checked"] and not data["passed"]


def test_cutt_probe():
    """The probe imports Jittor with cutt in a subprocess and says what became of it (here: no CUDA)."""
    from utils.tools.gpu_jittor import cutt_loads

    loaded, reason = cutt_loads(300)
    assert not loaded and "imports without it" in reason, reason
