"""Train a segmentor: `python utils/train.py --config local_configs.NYUDepthv2.DFormer_Large`.

The official recipe (`utils/train.py` upstream): AdamW with upstream's parameter groups, warm-up
poly schedule updated after every step, cross-entropy over labelled pixels, validation at epoch 1,
every 10 epochs and every epoch after `checkpoint_start_epoch`. Multi-process with Jittor's MPI:
`mpirun -np N python utils/train.py ...`; `C.batch_size` is the global batch, as upstream.

Every epoch ends with `last.pkl` written atomically in the run folder (model, optimiser, epoch),
so a killed run resumes with `--continue_fpath RUN/last.pkl` and loses at most one epoch; the
best validation mIoU is kept as `best.pkl`. Randomness is re-seeded from (seed, epoch) at the
start of every epoch, so a resumed run continues exactly as an uninterrupted one.
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # run as a file, not with -m: see utils/entry.py
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from utils.entry import load_config, main_guard  # noqa: E402  (sets Jittor defaults first)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config module, e.g. local_configs.NYUDepthv2.DFormer_Large")
    parser.add_argument("--continue_fpath", help="checkpoint (last.pkl) of an interrupted run to resume")
    parser.add_argument("--dataset-dir", help="dataset folder (default: C.dataset_path)")
    parser.add_argument("--run-dir", help="output folder (default: checkpoints/<dataset>_<backbone>)")
    parser.add_argument("--pretrained", help="ImageNet backbone file (default: C.pretrained_model)")
    parser.add_argument("--no-pretrained", action="store_true", help="train from scratch")
    parser.add_argument("--epochs", type=int, help="override C.nepochs")
    parser.add_argument("--val-mode", choices=["ss", "msf", "sliding"], help="default: C.val_mode")
    parser.add_argument("--seed", type=int, help="default: C.seed")
    parser.add_argument("--amp", action="store_true", help="mixed precision (Jittor AMP level 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def should_validate(epoch, C):
    """Upstream's schedule, plus the last epoch."""
    return epoch == 1 or epoch % 10 == 0 or epoch > C.checkpoint_start_epoch or epoch == C.nepochs


def seed_epoch(seed, epoch, train_set):
    """Re-seed every random source from (seed, epoch): resuming then replays the same draws."""
    import jittor as jt
    import numpy as np

    epoch_seed = seed * 1000 + epoch
    jt.set_global_seed(epoch_seed)  # random, numpy, jittor (DropPath, NMF bases); + rank under MPI
    train_set.epoch_seed = epoch_seed
    train_set._shuffle_rng = np.random.default_rng(epoch_seed)  # Jittor's loader keeps its own
    train_set.reset()  # loader workers fork again and see the new epoch seed


def train_step(model, optimizer, batch, C):
    """Forward, cross-entropy over labelled pixels, backward and AdamW update; returns the loss."""
    import jittor as jt

    logits = model(batch["data"], batch["modal_x"])
    loss = jt.nn.cross_entropy_loss(logits, batch["label"], ignore_index=C.background)
    optimizer.step(loss)
    return loss


def init_weights(model, C, args, log):
    from utils.checkpoint import load_checkpoint
    from utils.errors import UserError

    pretrained = None if args.no_pretrained else (args.pretrained or C.pretrained_model)
    if pretrained is None:
        log("training from scratch (no pretrained backbone)")
        return
    if not os.path.isfile(pretrained):
        raise UserError(f"pretrained backbone not found: {pretrained}\nPut the official ImageNet file there "
                        "(see checkpoints/README.md), pass --pretrained FILE, or --no-pretrained.")
    load_checkpoint(model, pretrained, backbone_only=True)
    log(f"backbone initialised from {pretrained}")


def train(args):
    import jittor as jt
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    from models import build_model
    from utils.checkpoint import load_checkpoint, save_checkpoint, state_dict_numpy
    from utils.dataset import RGBXDataset
    from utils.errors import UserError
    from utils.evaluate import evaluate
    from utils.optim import WarmUpPolyLR, build_optimizer, optimizer_state, restore_optimizer, set_lr

    C = load_config(args.config, args.dataset_dir)
    if args.epochs:
        C.nepochs = args.epochs
    seed = C.seed if args.seed is None else args.seed
    main_rank = jt.rank == 0
    run_dir = args.run_dir or os.path.join("checkpoints", f"{C.dataset_name}_{C.backbone}")
    log_file = None
    if main_rank:
        os.makedirs(run_dir, exist_ok=True)
        log_file = open(os.path.join(run_dir, "train.log"), "a")

    def log(message):
        if main_rank:
            tqdm.write(message)
            log_file.write(message + "\n")
            log_file.flush()

    if args.amp:
        if not jt.has_cuda:
            raise UserError("--amp needs a GPU: Jittor's CPU backend cannot compile float16 kernels")
        jt.flags.auto_mixed_precision_level = 5
    train_set = RGBXDataset(C, "train")
    val_set = RGBXDataset(C, "test")
    jt.set_global_seed(seed)  # the initial weights
    model = build_model(C)
    init_weights(model, C, args, log)
    optimizer = build_optimizer(model, C)
    total_iters = C.nepochs * C.niters_per_epoch
    schedule = WarmUpPolyLR(C.lr, C.lr_power, total_iters, C.niters_per_epoch * C.warm_up_epoch)
    start_epoch, best_miou = 1, -1.0
    if args.continue_fpath:
        state = load_checkpoint(model, args.continue_fpath)
        if not isinstance(state.get("optimizer"), dict) or "n_step" not in state["optimizer"]:
            # e.g. an official .pth: its torch optimizer state does not map onto Jittor's AdamW
            raise UserError(f"{args.continue_fpath} is not a checkpoint of utils/train.py (no optimizer "
                            "state to resume); to start from its weights, pass it as --pretrained")
        restore_optimizer(optimizer, state["optimizer"])
        start_epoch, best_miou = state["epoch"] + 1, state.get("best_miou", -1.0)
        log(f"resumed from {args.continue_fpath} at epoch {start_epoch}")
    val_mode = args.val_mode or C.val_mode
    per_process = C.batch_size // jt.world_size
    log(f"config {C.config_name}: {C.backbone}, {C.nepochs} epochs x {C.niters_per_epoch} iterations, "
        f"effective batch {C.batch_size} = {jt.world_size} process(es) x {per_process}, lr {C.lr}, "
        f"{'AMP' if args.amp else 'fp32'}, seed {seed}, run folder {run_dir}")
    writer = SummaryWriter(os.path.join(run_dir, "tb")) if main_rank else None

    for epoch in range(start_epoch, C.nepochs + 1):
        model.train()
        seed_epoch(seed, epoch, train_set)
        bar = tqdm(train_set, total=len(train_set), desc=f"epoch {epoch}/{C.nepochs}",
                   disable=args.no_progress or not main_rank, leave=False)
        loss_sum = 0.0
        for idx, batch in enumerate(bar):
            loss = train_step(model, optimizer, batch, C)
            iteration = (epoch - 1) * C.niters_per_epoch + idx
            # upstream sets the lr after the step: step 0 runs at the full base lr
            set_lr(optimizer, schedule.get_lr(iteration))
            loss_value = float(loss.item())
            loss_sum += loss_value
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.lr:.2e}")
            if writer:
                writer.add_scalar("train/loss", loss_value, iteration)
                writer.add_scalar("train/lr", optimizer.lr, iteration)
        log(f"epoch {epoch}: mean loss {loss_sum / max(len(train_set), 1):.4f}, lr {optimizer.lr:.3e}")
        miou = None
        if should_validate(epoch, C):
            metrics, mode_text, _ = evaluate(model, val_set, C, val_mode, progress=not args.no_progress)
            miou = metrics.summary()["mIoU"]
            log(f"epoch {epoch} validation {mode_text}: mIoU {miou:.2f}")
            if writer:
                writer.add_scalar("val/mIoU", miou, epoch)
        state = dict(model=state_dict_numpy(model), optimizer=optimizer_state(optimizer), epoch=epoch,
                     iteration=epoch * C.niters_per_epoch, config=C.config_name, val_mode=val_mode, miou=miou,
                     best_miou=max(best_miou, miou if miou is not None else -1.0))
        if main_rank:
            save_checkpoint(os.path.join(run_dir, "last.pkl"), **state)
            if miou is not None and miou > best_miou:
                save_checkpoint(os.path.join(run_dir, "best.pkl"), **state)
                log(f"new best mIoU {miou:.2f}: {os.path.join(run_dir, 'best.pkl')}")
        best_miou = state["best_miou"]
    if writer:
        writer.close()
    log(f"done: best validation mIoU {best_miou:.2f} ({val_mode}); checkpoints in {run_dir}")
    return run_dir


if __name__ == "__main__":
    main_guard(lambda: train(parse_args()))
