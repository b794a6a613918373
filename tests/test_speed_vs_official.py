"""utils/tools/speed_vs_official.py: the Jittor worker as the tool starts it (a subprocess answering
'step' with seconds and 'quit' with its peak RSS), in both modes. The PyTorch side needs the
official checkout and torch, which CI does not have."""
import os
import sys

import pytest

from utils.tools.speed_vs_official import ROOT, Worker


@pytest.mark.parametrize("mode,batch", [("infer", 1), ("train", 2)])
def test_jittor_worker(mode, batch):
    tool = os.path.join(ROOT, "utils", "tools", "speed_vs_official.py")
    command = [sys.executable, tool, "--worker", "jittor", "--config", "DFormer_Tiny", "--mode", mode,
               "--batch", str(batch), "--size", "64x64"]
    worker = Worker(command, ROOT)
    seconds = [worker.ask("step") for _ in range(2)]
    peak = worker.close()
    assert all(s > 0 for s in seconds), seconds
    assert 2**26 < peak < 2**35, peak  # bytes: more than the interpreter alone, less than 32 GiB
    assert worker.process.returncode == 0
