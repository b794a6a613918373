"""Two MPI processes (OpenMPI, CPU): disjoint shares of each global batch, identical weights."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from conftest import ROOT
from test_pipeline import TINY_CONFIG


def test_two_ranks_share_batches_and_stay_in_sync(tmp_path):
    assert shutil.which("mpirun"), "OpenMPI is needed (tests/run.sh installs it)"
    config = tmp_path / "tiny_config.py"
    # 5 test images: Jittor's split of the uneven last eval batch gives both ranks the same image
    config.write_text(TINY_CONFIG.format(data=str(tmp_path / "data")).replace("batch_size=2", "batch_size=4")
                      .replace("num_eval_imgs=4", "num_eval_imgs=5"))
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r}); from utils.entry import "
                    f"load_config; from utils.synthetic import ensure_synthetic_dataset; "
                    f"ensure_synthetic_dataset(load_config({str(config)!r}))"], check=True, cwd=ROOT)
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
