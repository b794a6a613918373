"""Train a segmentor: `python utils/train.py --config local_configs.NYUDepthv2.DFormer_Large`.

The official recipe as upstream's `train.sh` runs it (`--syncbn` included); multi-process with
`mpirun -np N python utils/train.py ...`. The loop is `utils/engine/trainer.py`.
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # run as a file, not with -m: see utils/entry.py
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from utils.entry import config_parser, main_guard  # noqa: E402  (Jittor's defaults; no Jittor import here)


def parse_args(argv=None):
    parser = config_parser(__doc__, with_set=True)
    parser.add_argument("--resume", "--continue_fpath", dest="resume", metavar="CHECKPOINT",
                        help="last.pkl of an interrupted run to resume (--continue_fpath: upstream's name)")
    parser.add_argument("--dataset-dir", help="dataset folder (default: C.dataset_path)")
    parser.add_argument("--run-dir", help="output folder (default: checkpoints/<dataset>_<backbone>)")
    parser.add_argument("--pretrained", help="ImageNet backbone file (default: C.pretrained_model)")
    parser.add_argument("--no-pretrained", action="store_true", help="train from scratch")
    parser.add_argument("--epochs", type=int, help="override C.nepochs")
    parser.add_argument("--accum-steps", type=int, help="micro-batches accumulated per optimiser step "
                        "(default: C.accum_steps, 1); the batch C.batch_size stays the effective batch")
    parser.add_argument("--val-mode", choices=["ss", "msf", "sliding"], help="default: C.val_mode")
    parser.add_argument("--seed", type=int, help="default: C.seed")
    parser.add_argument("--syncbn", default=True, action=argparse.BooleanOptionalAction,
                        help="upstream's flag (on in its train.sh, and the default): DFormerv2's stem and "
                        "downsampling BatchNorms train; --no-syncbn freezes them and, with several processes, "
                        "the other BatchNorms normalise with each process's own statistics")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision, as upstream's --amp: float16 convolutions and products, float32 "
                        "weights, optimiser state and norms, dynamic loss scale (GPU only; default: float32)")
    parser.add_argument("--val-amp", "--val_amp", dest="val_amp", action="store_true",
                        help="validate under autocast, as upstream's --val_amp (its default; here float32 is)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main():
    from utils.engine.trainer import train  # after main_guard: Jittor's defaults are set

    train(parse_args())


if __name__ == "__main__":
    main_guard(main)
