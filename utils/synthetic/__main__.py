"""Write the synthetic RGB-D data set (random furnished rooms, `generate.py`) in the NYUDepthv2 layout.

    python -m utils.synthetic --config local_configs.Synthetic.DFormer_Tiny   # what train.sh runs
    python -m utils.synthetic --out datasets/Synthetic --num-train 400 --num-test 100 \\
        --height 128 --width 160 --seed 12345

`--config` generates the config's data set where the config looks for it when it is missing, and
regenerates it when the settings it was made with differ from the config's (image size, counts,
seed, classes).
"""
import argparse

from local_configs._base_ import DATASETS, SHARED
from utils.entry import load_config, main_guard
from utils.synthetic.generate import ensure_synthetic_dataset, generate_dataset


def main(argv=None):
    defaults = DATASETS["Synthetic"]
    parser = argparse.ArgumentParser(prog="python -m utils.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="generate what this config needs, where it looks (if not done yet)")
    parser.add_argument("--out", default="datasets/Synthetic", help="output folder (created)")
    parser.add_argument("--num-train", type=int, default=defaults["num_train_imgs"])
    parser.add_argument("--num-test", type=int, default=defaults["num_eval_imgs"])
    parser.add_argument("--height", type=int, default=defaults["image_height"])
    parser.add_argument("--width", type=int, default=defaults["image_width"])
    parser.add_argument("--seed", type=int, default=SHARED["seed"])
    args = parser.parse_args(argv)
    if args.config:
        C = load_config(args.config)
        ensure_synthetic_dataset(C)
        print(f"synthetic data set for {args.config}: {C.dataset_path}")
        return
    generate_dataset(args.out, args.num_train, args.num_test, args.height, args.width, args.seed)
    print(f"wrote {args.num_train} train + {args.num_test} test samples to {args.out}")


if __name__ == "__main__":
    main_guard(main)
