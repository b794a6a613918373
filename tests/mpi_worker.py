"""Run by test_mpi.py as `mpirun -np 2 python tests/mpi_worker.py CONFIG OUT_DIR`.

Takes the first training steps exactly as utils/train.py does, then writes what this rank saw
(sample names, a weight digest, its validation metrics) to OUT_DIR/rank<r>.json.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.jittor_env import apply_defaults  # noqa: E402

apply_defaults()  # Jittor's environment defaults, before Jittor is imported

import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402

from models import build_model  # noqa: E402
from utils.dataloader.dataset import RGBXDataset  # noqa: E402
from utils.entry import load_config  # noqa: E402
from utils.engine.evaluate import evaluate  # noqa: E402
from utils.engine.optim import build_optimizer  # noqa: E402
from utils.engine.trainer import seed_epoch, seed_everything, train_step  # noqa: E402

config, out_dir = sys.argv[1], sys.argv[2]
C = load_config(config)
train_set, val_set = RGBXDataset(C, "train"), RGBXDataset(C, "test")
seed_everything(C.seed)  # as the trainer seeds the initial weights
model = build_model(C)
optimizer = build_optimizer(model, C)
model.train()
seed_epoch(C.seed, 1, train_set)
names = []
for step, batch in enumerate(train_set):
    names.append(list(batch["fn"]))
    train_step(model, optimizer, [batch], C)
    if step == 2:
        break
weights = np.concatenate([v.numpy().ravel() for v in model.state_dict().values()])
metrics, _, _ = evaluate(model, val_set, C, "ss", progress=False)
labelled = sum(int((val_set.read_sample(name)[2] != 255).sum()) for name in val_set.names)
with open(os.path.join(out_dir, f"rank{jt.rank}.json"), "w") as file:
    json.dump(dict(world_size=jt.world_size, names=names, weight_sum=float(np.abs(weights).sum()),
                   weight_head=weights[:64].tolist(), hist=metrics.hist.tolist(), labelled_pixels=labelled), file)
