"""Evaluate a checkpoint: `python utils/eval.py --config CFG --checkpoint CKPT [--mode ss|msf|sliding]`.

Prints per-class and summary tables labelled with the protocol (modes: `utils/engine/evaluate.py`),
the speed, and the projected time of the full official protocol.
"""
import json
import os
import sys

if __package__ in (None, ""):  # run as a file, not with -m: see utils/entry.py
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from utils.entry import (check_checkpoint, check_precision, config_parser, load_config, load_model,  # noqa: E402
                         main_guard)
from utils.speed.timing import format_protocol_time, projected_protocol_time  # noqa: E402
from utils.engine.metrics import trivial_baseline  # noqa: E402
from utils.files import atomic_open  # noqa: E402


def parse_args(argv=None):
    parser = config_parser(__doc__, with_set=True)
    parser.add_argument("--checkpoint", required=True, help="official .pth or a checkpoint of utils/train.py")
    parser.add_argument("--dataset-dir", help="dataset folder (default: C.dataset_path)")
    parser.add_argument("--mode", choices=["ss", "msf", "sliding"], default="ss")
    parser.add_argument("--scales", type=float, nargs="+", help="msf/sliding scales (default: C.eval_scale_array)")
    parser.add_argument("--no-flip", action="store_true", help="msf/sliding without the flipped pass")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: 1 per process)")
    parser.add_argument("--precision", choices=["fp32", "amp", "fp16"], default="fp32",
                        help="amp: under autocast, as upstream's --val_amp; fp16: float16 weights (GPU only)")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    return parser.parse_args(argv)


def main(args):
    import jittor as jt  # here, after main_guard's check: importing Jittor may abort on a broken setup

    from utils.dataloader.dataset import RGBXDataset
    from utils.engine.evaluate import evaluate

    C = load_config(args.config, dict(dataset_path=args.dataset_dir), args.set)
    check_checkpoint(C, args.checkpoint)
    check_precision(args.precision)
    dataset = RGBXDataset(C, "test", batch_size=args.batch_size)
    model = load_model(C, args.checkpoint)
    metrics, mode_text, images_per_second = evaluate(
        model, dataset, C, args.mode, args.scales, False if args.no_flip else None, precision=args.precision)
    if jt.rank != 0:
        return
    result = metrics.summary()
    print(metrics.format_table(C.class_names, mode_text))
    print(f"{C.config_name} | {args.checkpoint} | {mode_text}: aAcc {result['aAcc']:.2f}  "
          f"mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}  mF1 {result['mF1']:.2f}")
    baseline = trivial_baseline(metrics.hist.sum(1))
    print(f"trivial baseline (always '{C.class_names[baseline['class_index']]}', the most frequent class): "
          f"mIoU {baseline['mIoU']:.2f}  aAcc {baseline['aAcc']:.2f}")
    if args.mode == "ss":  # project the official NYUDepthv2 multi-scale + flip protocol from this speed
        pixels = C.image_height * C.image_width / (480 * 640)  # cost taken as proportional to pixels
        print(f"speed: {images_per_second:.2f} images/s at {C.image_height}x{C.image_width}; at 480x640 "
              f"{format_protocol_time(projected_protocol_time(images_per_second * pixels))}")
    else:
        print(f"speed: {images_per_second:.2f} images/s in this mode; the {len(dataset.names)} test images "
              f"take {len(dataset.names) / images_per_second / 60:.1f} min")
    if args.json:
        with atomic_open(args.json, "w") as file:
            json.dump(dict(config=C.config_name, checkpoint=args.checkpoint, mode=mode_text,
                           images_per_second=images_per_second, **result), file, indent=1)


if __name__ == "__main__":
    main_guard(lambda: main(parse_args()))
