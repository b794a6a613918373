"""Run by test_mpi.py, as `python tests/steps_worker.py CONFIG OUT` or under `mpirun -np 2`.

Builds the model as utils/train.py does (seeded per process, then process 0's weights everywhere;
process 0 first replaces its seeded weights with the stand-in weights of utils/tools/stand_in_weights.py, so
that runs with 1 and 2 processes start alike, and the others receive them by broadcast) and takes optimiser steps with utils/train.py's `train_step` on the same global batches, with
NMF bases fixed per image (drawn from its name) and drop path and dropout off, so that any number
of processes and accumulation steps computes the same maths. Process 0 writes OUT/<world>.npz:
- train/*: 3 steps, BatchNorm in training mode (statistics synchronised over the processes):
  losses, the update of every state_dict entry;
- accum<N>/*: one step with BatchNorm in eval mode and N accumulation steps: the gradients.
"""
import argparse
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.jittor_env import apply_defaults  # noqa: E402

apply_defaults()  # Jittor's environment defaults, before Jittor is imported

import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402

from utils.dataloader.dataset import RGBXDataset  # noqa: E402
from utils.engine.trainer import (broadcast_from_rank0, build_training, load_training_config,  # noqa: E402
                         micro_batch_groups, seed_epoch, train_step)
from utils.jittor_private import adamw_slots  # noqa: E402
from utils.tools.stand_in_weights import synthetic_state_dict  # noqa: E402


def bases_by_name(nmf, queue):
    """NMF bases for the next images of `queue` (names), the same whichever process runs them."""
    def build_bases(batch, D):
        names = [queue.pop(0) for _ in range(batch)]
        raw = np.stack([np.random.default_rng(zlib.crc32(n.encode())).random((D, nmf.R), dtype=np.float32)
                        for n in names])
        norm = np.sqrt((raw.astype(np.float64) ** 2).sum(1, keepdims=True))
        return jt.array((raw / norm).astype(np.float32))
    nmf.build_bases = build_bases


def run(config, accum_steps, steps, bn_train):
    """Losses, state_dict before and after the steps, the last step's gradients by parameter name."""
    args = argparse.Namespace(config=config, dataset_dir=None, epochs=None, accum_steps=accum_steps, amp=False,
                              val_amp=False, syncbn=True, no_pretrained=True, pretrained=None, resume=None,
                              val_mode=None, seed=None, set=["drop_path_rate=0.0"])
    C = load_training_config(args)
    model, optimizer, _, _, _, _ = build_training(C, args, 1, lambda message: None)  # 1 iteration per epoch: unused
    if jt.rank == 0:  # the same start with any number of processes; the others get it by broadcast
        model.load_parameters(synthetic_state_dict([(k, v.shape) for k, v in model.state_dict().items()]))
    broadcast_from_rank0(model)
    initial = {k: v.numpy() for k, v in model.state_dict().items()}
    model.decode_head.dropout.p = 0.0
    model.train()
    if not bn_train:
        for module in model.modules():
            if isinstance(module, jt.nn.BatchNorm):
                module.is_train = False
    queue = []
    bases_by_name(model.decode_head.hamburger.ham, queue)
    train_set = RGBXDataset(C, "train", batch_size=C.batch_size // C.accum_steps)
    seed_epoch(C.seed, 1, train_set)
    losses = []
    for step, micro_batches in enumerate(micro_batch_groups(train_set, C.accum_steps)):
        queue[:] = [name for batch in micro_batches for name in batch["fn"]]
        losses.append(train_step(model, optimizer, micro_batches, C))
        if step + 1 == steps:
            break
    names = {id(p): n for n, p in model.named_parameters()}
    grads = {names[id(p)]: g.numpy() for group in optimizer.param_groups for p, g, _, _ in adamw_slots(group)}
    final = {k: v.numpy() for k, v in model.state_dict().items()}
    return losses, initial, final, grads


def main():
    config, out_dir = sys.argv[1], sys.argv[2]
    out = {}
    losses, initial, final, _ = run(config, 1, 3, bn_train=True)
    out["train/losses"] = np.array(losses)
    out.update({f"train/initial/{k}": v for k, v in initial.items()})
    out.update({f"train/final/{k}": v for k, v in final.items()})
    for accum in (1, 2):
        _, _, _, grads = run(config, accum, 1, bn_train=False)
        out.update({f"accum{accum}/grad/{name}": g for name, g in grads.items()})
    np.savez(os.path.join(out_dir, f"{jt.world_size}_rank{jt.rank}.npz"), **out)


if __name__ == "__main__":
    main()
