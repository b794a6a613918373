"""Predict and visualise: on a dataset split, a folder of RGB+depth pairs, or one pair.

    python utils/infer.py --config CFG --checkpoint CKPT --input-dir DIR --output-dir OUT

A folder holds `RGB/` and `Depth/` with files of the same name. Each image gets `<name>.png` (palette
label map), `<name>_overlay.png` and `<name>_panel.png`; a labelled split also prints its metrics.
`--backend onnx --onnx FILE` runs the forward of a `utils/export_onnx.py` file in ONNX Runtime instead.
"""
import os
import sys

if __package__ in (None, ""):  # run as a file, not with -m: see utils/entry.py
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from utils.entry import (check_checkpoint, check_precision, config_parser,  # noqa: E402  (Jittor defaults first)
                         load_config, load_model, main_guard)
from utils.errors import UserError  # noqa: E402


def parse_args(argv=None):
    parser = config_parser(__doc__)
    parser.add_argument("--checkpoint", help="official .pth or a checkpoint of utils/train.py (Jittor backend)")
    parser.add_argument("--backend", choices=["jittor", "onnx"], default="jittor",
                        help="run the model in Jittor, or an exported --onnx file in ONNX Runtime")
    parser.add_argument("--onnx", help="ONNX file of utils/export_onnx.py (with --backend onnx)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: one per CPU core)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--rgb", help="one RGB image (with --depth)")
    source.add_argument("--input-dir", help="folder with RGB/ and Depth/ of matching file names")
    source.add_argument("--split", choices=["test"], help="the config's labelled test split")
    parser.add_argument("--depth", help="depth map of --rgb")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--dataset-dir", help="dataset folder for --split (default: C.dataset_path)")
    parser.add_argument("--mode", choices=["ss", "msf", "sliding"], default="ss")
    parser.add_argument("--precision", choices=["fp32", "amp", "fp16"], default="fp32",
                        help="Jittor backend: amp (autocast) or fp16 (float16 weights), GPU only")
    return parser.parse_args(argv)


def check_writable(folder):
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as error:
        raise UserError(f"cannot write to output folder {folder}: {error.strerror}; choose another "
                        "--output-dir") from None


def main(args):
    import jittor as jt
    import cv2

    from utils.dataloader.dataset import InferenceDataset, RGBXDataset, list_inference_pairs
    from utils.engine.evaluate import evaluate
    from utils.engine.visualize import save_prediction

    if args.rgb and not args.depth:
        raise UserError("--rgb needs --depth (the depth map of that image)")
    if args.backend == "jittor" and not args.checkpoint:
        raise UserError("--checkpoint is needed (or --backend onnx --onnx FILE)")
    if args.onnx and args.backend != "onnx":
        raise UserError("--onnx FILE runs with --backend onnx")
    if args.backend == "onnx" and not args.onnx:
        raise UserError("--backend onnx needs --onnx FILE (written by utils/export_onnx.py)")
    if args.backend == "onnx" and args.precision != "fp32":
        raise UserError("--precision is for the Jittor backend; the ONNX file runs as exported")
    check_precision(args.precision)
    C = load_config(args.config, dict(dataset_path=args.dataset_dir))
    if args.backend == "jittor":
        check_checkpoint(C, args.checkpoint)
    check_writable(args.output_dir)
    dataset = (RGBXDataset(C, args.split) if args.split
               else InferenceDataset(C, list_inference_pairs(args.rgb or args.input_dir, args.depth)))
    if args.backend == "onnx":
        from utils.onnx_export.backend import OnnxSegmentor

        model = OnnxSegmentor(args.onnx, C.num_classes, args.threads)
    else:
        model = load_model(C, args.checkpoint)

    def save(batch, pred):
        for i, name in enumerate(batch["fn"]):
            if args.split:  # the images as read, before evaluation's padding
                rgb, depth, _ = dataset.read_sample(name)
                rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB) if C.bgr_input else rgb
                depth = depth[:, :, 0]
            else:
                rgb, depth = batch["image"][i].numpy(), batch["depth"][i].numpy()
            height, width = depth.shape
            # SUNRGBD evaluation pads to 531x730; the prediction is cropped back to the image
            save_prediction(args.output_dir, name, rgb, depth, pred[i, :height, :width], C.class_names)

    metrics, mode_text, images_per_second = evaluate(model, dataset, C, args.mode, on_prediction=save,
                                                     precision=args.precision)
    if jt.rank == 0:
        print(f"wrote {len(dataset.names) if args.split else len(dataset.pairs)} predictions "
              f"({mode_text}, {images_per_second:.2f} images/s) to {args.output_dir}")
        if args.split:
            result = metrics.summary()
            print(f"{C.config_name} | {mode_text}: mIoU {result['mIoU']:.2f}  aAcc {result['aAcc']:.2f}")


if __name__ == "__main__":
    main_guard(lambda: main(parse_args()))
