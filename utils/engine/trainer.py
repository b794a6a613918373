"""The training loop of `utils/train.py`: upstream's `utils/train.py` as its `train.sh` runs it.

`C.batch_size` is the global batch, as upstream, split over `mpirun -np N` processes and
`C.accum_steps` micro-batches per optimiser step. Every epoch ends with an atomic `last.pkl`, so a
killed run loses at most one epoch and resumes (`--resume RUN/last.pkl`) exactly as if uninterrupted;
the best mIoU is `best.pkl`. `--amp` is upstream's mixed precision: forwards under
`models.precision.autocast`, the loss scaled by `amp.LossScaler` (GradScaler's dynamic scale).
"""
import os

import jittor as jt
import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

from local_configs._base_ import IGNORE_LABEL
from models import build_model, precision
from models.batchnorm import BatchNorm2d, SyncBatchNorm

from ..dataloader.dataset import RGBXDataset
from ..entry import check_precision, load_config
from ..errors import UserError
from .amp import LossScaler
from .checkpoint import load_checkpoint, save_checkpoint, state_dict_numpy
from .evaluate import evaluate
from .loss import cross_entropy
from .optim import WarmUpPolyLR, build_optimizer, optimizer_state, restore_optimizer, set_lr


def should_validate(epoch, C):
    """Upstream's schedule, plus the last epoch."""
    return epoch == 1 or epoch % 10 == 0 or epoch > C.checkpoint_start_epoch or epoch == C.nepochs


def seed_everything(*key):
    """Seed Python's, numpy's and Jittor's generators (+ the rank under MPI) from the ints `key`,
    mixed by numpy's SeedSequence: Jittor's CPU generator (libstdc++'s minstd_rand0) gives seeds 0
    and 1 the same stream and seeds s and c*s streams that are multiples of each other, so nearby
    seeds reaching it unmixed would draw the same or related initial weights and masks. Any int
    works, negative ones too (as `torch.manual_seed`)."""
    entropy = [k % 2**64 for k in key]  # SeedSequence takes non-negative ints
    jt.set_global_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1))


def seed_epoch(seed, epoch, train_set):
    """Re-seed every random source from (seed, epoch): resuming then replays the same draws."""
    seed_everything(seed, epoch)  # random, numpy, jittor (DropPath, NMF bases)
    train_set.set_epoch(seed * 1000 + epoch)  # the loader's shuffle and augmentation


def micro_batch_groups(loader, accum_steps):
    """The loader's batches in tuples of `accum_steps`, one per optimiser step (a partial last one dropped)."""
    batches = iter(loader)
    return zip(*[batches] * accum_steps)


def labelled_pixels(micro_batches):
    """Labelled pixels in the micro-batches of this optimiser step, summed over all processes."""
    count = sum(int((batch["label"].numpy() != IGNORE_LABEL).sum()) for batch in micro_batches)
    if jt.in_mpi:
        count = int(jt.array(np.array([count], np.float64)).mpi_all_reduce("add").numpy()[0])
    return count


def train_step(model, optimizer, micro_batches, C, scaler=None):
    """One optimiser step; returns its loss. Each micro-batch's loss sum is divided by the labelled pixels
    of the whole step on all processes (x world size: Jittor averages process gradients), so the gradient
    is upstream's single-process full-batch one (upstream's DDP averages per-GPU means). With a
    `LossScaler` (`--amp`) the forwards run under autocast and the scaler steps (or skips inf/NaN steps)."""
    normaliser = labelled_pixels(micro_batches) / jt.world_size
    losses = []
    for batch in micro_batches:
        with precision.autocast(scaler is not None):
            logits = model(batch["data"], batch["modal_x"])
        loss = cross_entropy(logits, batch["label"], normaliser=normaliser)
        optimizer.backward(loss if scaler is None else scaler.scaled(loss))
        losses.append(loss.mpi_all_reduce("mean") if jt.in_mpi else loss)
        if len(micro_batches) > 1:
            jt.sync_all()  # run this backward now: one micro-batch's activations in memory at a time
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
    return sum(float(loss.item()) for loss in losses)


def broadcast_from_rank0(model):
    """Every MPI process takes process 0's weights, as DDP at start: `jt.set_global_seed` seeds each
    process differently, and Jittor's optimiser broadcasts only after the first gradients."""
    if not jt.in_mpi:
        return
    for value in model.state_dict().values():
        value.update(value.mpi_broadcast(0))
    jt.sync_all()


def set_batchnorm_sync(model, syncbn):
    """`--syncbn`: every BatchNorm syncs over the processes (DFormer's stem too, a plain BatchNorm
    upstream), as one process normalises the whole batch; `--no-syncbn`: per-process statistics, except
    DFormerv2's `SyncBatchNorm`s (stem and downsampling), synced whatever the flag as upstream."""
    for module in model.modules():
        if isinstance(module, BatchNorm2d) and not isinstance(module, SyncBatchNorm):
            module.sync = syncbn


def init_weights(model, C, args, log):
    pretrained = None if args.no_pretrained else (args.pretrained or C.pretrained_model)
    if pretrained is None:
        log("training from scratch (no pretrained backbone)")
        return
    if not os.path.isfile(pretrained):
        raise UserError(f"pretrained backbone not found: {pretrained}\nPut the official ImageNet file there "
                        "(see checkpoints/README.md), pass --pretrained FILE, or --no-pretrained.")
    load_checkpoint(model, pretrained, backbone_only=True)
    log(f"backbone initialised from {pretrained}")


class RunLog:
    """train.log, the console and TensorBoard, written by process 0 only."""
    def __init__(self, run_dir):
        self.file = self.writer = None
        if jt.rank == 0:
            os.makedirs(run_dir, exist_ok=True)
            self.file = open(os.path.join(run_dir, "train.log"), "a")
            self.writer = SummaryWriter(os.path.join(run_dir, "tb"))

    def __call__(self, message):
        if self.file:
            tqdm.write(message)
            self.file.write(message + "\n")
            self.file.flush()

    def scalar(self, tag, value, step):
        if self.writer:
            self.writer.add_scalar(tag, value, step)

    def close(self):
        if self.file:
            self.writer.close()
            self.file.close()


def load_training_config(args):
    """The config with the command-line overrides, final from here on; checks that the batch splits evenly."""
    C = load_config(args.config, dict(dataset_path=args.dataset_dir, nepochs=args.epochs, accum_steps=args.accum_steps,
                                      val_mode=args.val_mode, seed=args.seed), args.set)
    if C.accum_steps < 1 or C.batch_size % (C.accum_steps * jt.world_size):
        raise UserError(f"batch_size {C.batch_size} (the effective global batch) must split into "
                        f"{jt.world_size} process(es) x {C.accum_steps} accumulation step(s) x a micro-batch")
    if args.amp or args.val_amp:
        check_precision("amp", "--amp" if args.amp else "--val-amp")
    return C


def build_training(C, args, niters_per_epoch, log):
    """Model (process 0's weights everywhere), optimiser, schedule, first epoch, best mIoU, LossScaler/None."""
    seed_everything(C.seed)  # the initial weights
    model = build_model(C)
    set_batchnorm_sync(model, args.syncbn)
    init_weights(model, C, args, log)
    optimizer = build_optimizer(model, C, args.syncbn)
    # the schedule counts optimiser steps: niters_per_epoch of them per epoch, whatever accum_steps
    schedule = WarmUpPolyLR(C.lr, C.lr_power, C.nepochs * niters_per_epoch, niters_per_epoch * C.warm_up_epoch)
    start_epoch, best_miou = 1, -1.0
    scaler = LossScaler() if args.amp else None
    if args.resume:
        state = load_checkpoint(model, args.resume)
        if not isinstance(state.get("optimizer"), dict) or "n_step" not in state["optimizer"]:
            # e.g. an official .pth: its torch optimizer state does not map onto Jittor's AdamW
            raise UserError(f"{args.resume} is not a checkpoint of utils/train.py (no optimizer "
                            "state to resume); to start from its weights, pass it as --pretrained")
        restore_optimizer(optimizer, state["optimizer"])
        start_epoch, best_miou = state["epoch"] + 1, state.get("best_miou", -1.0)
        if scaler is not None and state.get("loss_scaler"):
            scaler.load_state_dict(state["loss_scaler"])
        log(f"resumed from {args.resume} at epoch {start_epoch}")
    broadcast_from_rank0(model)
    return model, optimizer, schedule, start_epoch, best_miou, scaler


def train_epoch(model, optimizer, schedule, train_set, C, epoch, log, progress, scaler=None):
    """One epoch of `train_set.niters_per_epoch` optimiser steps; returns the mean loss."""
    model.train()
    bar = tqdm(micro_batch_groups(train_set, C.accum_steps), total=len(train_set) // C.accum_steps,
               desc=f"epoch {epoch}/{C.nepochs}", disable=not progress or jt.rank != 0, leave=False)
    loss_sum, steps = 0.0, 0
    for idx, micro_batches in enumerate(bar):
        loss = train_step(model, optimizer, micro_batches, C, scaler)
        iteration = (epoch - 1) * train_set.niters_per_epoch + idx
        # upstream sets the lr after the step: step 0 runs at the full base lr
        set_lr(optimizer, schedule.get_lr(iteration))
        loss_sum, steps = loss_sum + loss, steps + 1
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{optimizer.lr:.2e}")
        log.scalar("train/loss", loss, iteration)
        log.scalar("train/lr", optimizer.lr, iteration)
        if scaler is not None:
            log.scalar("train/loss_scale", scaler.scale, iteration)
    return loss_sum / max(steps, 1)


def validate_and_save(model, optimizer, val_set, C, epoch, iteration, best_miou, args, run_dir, log, scaler=None):
    """Validation when the schedule says so, then last.pkl (and best.pkl); returns the best mIoU."""
    miou = None
    if should_validate(epoch, C):
        metrics, mode_text, _ = evaluate(model, val_set, C, C.val_mode, progress=not args.no_progress,
                                         precision="amp" if args.val_amp else "fp32")
        miou = metrics.summary()["mIoU"]
        log(f"epoch {epoch} validation {mode_text}: mIoU {miou:.2f}")
        log.scalar("val/mIoU", miou, epoch)
    state = dict(model=state_dict_numpy(model), optimizer=optimizer_state(optimizer), epoch=epoch,
                 iteration=iteration, config=C.config_name, val_mode=C.val_mode, miou=miou,
                 best_miou=max(best_miou, miou if miou is not None else -1.0),
                 loss_scaler=None if scaler is None else scaler.state_dict())
    if jt.rank == 0:
        save_checkpoint(os.path.join(run_dir, "last.pkl"), **state)
        if miou is not None and miou > best_miou:
            save_checkpoint(os.path.join(run_dir, "best.pkl"), **state)
            log(f"new best mIoU {miou:.2f}: {os.path.join(run_dir, 'best.pkl')}")
    return state["best_miou"]


def train(args):
    """Run the training of the parsed command line `args`; returns the run folder."""
    C = load_training_config(args)
    run_dir = args.run_dir or os.path.join("checkpoints", f"{C.dataset_name}_{C.backbone}")
    log = RunLog(run_dir)
    micro_batch = C.batch_size // C.accum_steps  # global, split over the processes by Jittor
    train_set = RGBXDataset(C, "train", batch_size=micro_batch)
    val_set = RGBXDataset(C, "test")
    niters = train_set.niters_per_epoch
    model, optimizer, schedule, start_epoch, best_miou, scaler = build_training(C, args, niters, log)
    log(f"config {C.config_name}: {C.backbone}, {C.nepochs} epochs x {niters} iterations, "
        f"effective batch {C.batch_size} = {jt.world_size} process(es) x {micro_batch // jt.world_size}"
        f"{f' x {C.accum_steps} accumulation steps' if C.accum_steps > 1 else ''}, lr {C.lr}, "
        f"{'AMP' if args.amp else 'fp32'}{', validation under autocast' if args.val_amp else ''}, "
        f"{'' if args.syncbn else 'no '}syncbn, seed {C.seed}, run folder {run_dir}")
    for epoch in range(start_epoch, C.nepochs + 1):
        seed_epoch(C.seed, epoch, train_set)
        mean_loss = train_epoch(model, optimizer, schedule, train_set, C, epoch, log, not args.no_progress, scaler)
        log(f"epoch {epoch}: mean loss {mean_loss:.4f}, lr {optimizer.lr:.3e}")
        best_miou = validate_and_save(model, optimizer, val_set, C, epoch, epoch * niters, best_miou, args, run_dir,
                                      log, scaler)
    log(f"done: best validation mIoU {best_miou:.2f} ({C.val_mode}); checkpoints in {run_dir}")
    log.close()
    return run_dir
