"""Parameters and FLOPs of the DFormer / DFormerv2 models, next to the published numbers.

    python benchmark.py --config local_configs.NYUDepthv2.DFormer_Large
    python benchmark.py --all                       # every NYUDepthv2 config
    python benchmark.py --all --sizes 480x640 530x730 --json flops.json

"module" GFLOPs reproduce `thop.profile`, as the papers publish them; "full" adds the attention and
NMF matrix products thop cannot see (how each is counted: `utils/speed/flops.py`).
"""
import argparse
import json

from models.registry import MODELS
from utils.entry import main_guard
from utils.files import atomic_open
from utils.speed.flops import benchmark_config, format_table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="config module, e.g. local_configs.NYUDepthv2.DFormer_Large")
    parser.add_argument("--all", action="store_true", help="every NYUDepthv2 config")
    parser.add_argument("--sizes", nargs="+", default=["480x640", "530x730"], help="HxW, e.g. 480x640")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if not args.all and not args.config:
        parser.error("give --config or --all")
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    configs = [spec.config_module() for spec in MODELS.values()] if args.all else [args.config]
    results = [benchmark_config(name, sizes) for name in configs]
    print("Counter: thop-compatible module count ('module', what the papers publish) and module count plus "
          "attention/NMF matrix products ('full'); batch size 1, rgb and depth both 3 x H x W, eval mode. "
          "GFLOPs = GMACs as published (thop). Published FLOPs: NYUDepthv2 at 480x640, SUNRGBD at 530x730 "
          "(counted here with the NYU configs' decoders; the paper's SUN DFormerv2-S/B numbers used a 512 decoder).")
    print(format_table(results, sizes))
    if args.json:
        with atomic_open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    return results


if __name__ == "__main__":
    main_guard(main)
