"""The op graph a GPU runs has no op without a CUDA implementation, tested on the CPU.

With DFORMER_CPU_KERNELS=0 the CPU takes the GPU's ops (`models.cpu_kernels.enabled`). For each
of the 7 models an eval forward at 1x64x64 and a training step (`utils.train.train_step`: forward,
loss, backward, AdamW) run under Jittor's profiler; none of the executed ops may be one that Jittor
would run on the host inside a CUDA graph (`utils.gpu_graph.CPU_ONLY_OPS`: `transpose`, `jt.code`
CPU kernels, ...). The eval logits must still match the official model's (parity fixture).
"""
import os

import numpy as np
import pytest

from conftest import FIXTURES, OFFICIAL_KEYS

SHAPE = (1, 64, 64)  # (batch, height, width), the first case of the parity fixture
FIXTURE_SEED = 1
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    return np.load(os.path.join(FIXTURES, "parity_logits.npz"))


@pytest.mark.parametrize("name", sorted(OFFICIAL_KEYS))
def test_gpu_graph_runs_no_cpu_only_op(name, reference, monkeypatch):
    from models import cpu_kernels
    from utils.gpu_graph import cpu_only_ops, eval_forward, profile, training_step
    from utils.gpu_jittor import build_with_weights

    monkeypatch.setenv(cpu_kernels.SWITCH, "0")
    model, C = build_with_weights(name)
    found = {}
    logits = []
    rows = profile(lambda: logits.append(eval_forward(model, SHAPE, FIXTURE_SEED).numpy()))
    found["eval forward"] = cpu_only_ops(rows)
    found["training step"] = cpu_only_ops(profile(lambda: training_step(model, C, SHAPE)))
    print(f"{name}: CPU-only ops executed: {found}")
    assert found == {"eval forward": {}, "training step": {}}, f"{name} runs ops without a CUDA kernel: {found}"

    tag = f"{name}/{'x'.join(map(str, SHAPE))}"
    error = np.abs(logits[0].reshape(-1)[reference[tag + "/logit_index"]] - reference[tag + "/logit_values"]).max()
    assert error < TOLERANCE, (tag, error)


def test_profile_sees_cpu_kernels():
    """The same check with the CPU kernels on finds them: the detector is not blind to `jt.code`."""
    from models import cpu_kernels
    from utils.gpu_graph import cpu_only_ops, eval_forward, profile
    from utils.gpu_jittor import build_with_weights

    assert cpu_kernels.enabled()
    model, _ = build_with_weights("DFormer-Tiny")
    assert cpu_only_ops(profile(lambda: eval_forward(model, SHAPE))).get("code", 0) > 0
