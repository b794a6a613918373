"""The GPU check script's pipeline, run on the CPU (`--cpu-smoke`), as CI can without a GPU.

`python -m utils.gpu_check --cpu-smoke` runs everything the GPU run does (CPU reference in a
subprocess, eval logits, argmax, training steps, latency, JSON/Markdown report) at 32x48. Here
both sides are the CPU, so the logits must agree to rounding and the argmax everywhere.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from utils.gpu_check import MODELS, resolve_models

SMOKE_MODELS = ["DFormer-Tiny", "DFormerv2-Small"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    command = [sys.executable, "-m", "utils.gpu_check", "--cpu-smoke", "--models", "DFormer-Tiny,DFormerv2-S",
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
    assert report["checks"] == {"environment": True}
    assert report["environment"]["jittor"]["mode"] == "CPU"
    assert list(report["models"]) == SMOKE_MODELS
    for name, entry in report["models"].items():
        assert entry["config"] == f"local_configs.NYUDepthv2.{MODELS[name]}"
        assert entry["errors"] == [], name
        assert entry["checks"] == {"loss_decreased": True, "diff_vs_cpu": True, "argmax": True, "latency": True}
        assert entry["max_abs_diff_vs_cpu"] <= 1e-5
        assert entry["argmax_agreement"] == 1.0
        assert len(entry["losses"]) == 3 and entry["loss_after"] < entry["loss_before"]
        assert entry["loss_before"] == entry["losses"][0] and 0 < entry["loss_before"] < 20
        assert entry["first_forward_s"] > 0
        assert [(row["precision"], row["batch"]) for row in entry["latency"]] == [("fp32", 1), ("fp32", 2)]
        for row in entry["latency"]:
            assert row["jittor_ms"] > 0 and row["pytorch_ms"] is None and row["ratio"] is None


def test_model_names():
    assert resolve_models("all") == list(MODELS)
    assert resolve_models("DFormer-Tiny, dformerv2-s,DFormerv2_L,DFormer-Tiny") == \
        ["DFormer-Tiny", "DFormerv2-Small", "DFormerv2-Large"]
    with pytest.raises(ValueError, match="unknown model"):
        resolve_models("DFormer-Huge")


def test_refuses_without_gpu_outside_smoke_mode(tmp_path):
    """On a machine where Jittor runs on the CPU, the GPU mode stops at once with exit code 2."""
    env = dict(os.environ, nvcc_path="")
    command = [sys.executable, "-m", "utils.gpu_check", "--models", "DFormer-Tiny", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--cpu-smoke" in done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["checks"] == {"environment": False} and not report["passed"]
