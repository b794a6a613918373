"""What every entry point (train, eval, infer, latency, export_onnx, benchmark) does first, written once.

`main_guard` sets Jittor's defaults and checks its setup before Jittor is imported, and prints a
`UserError` as one message. The command lines in utils/ also run as `python utils/X.py`; only they edit
`sys.path`, all with the same two lines, replacing the script's folder (whose files would shadow
top-level names) with the repository.
"""
import argparse
import ast
import importlib
import importlib.util
import os
import sys

from local_configs._base_ import Config, ConfigError
from models import MODELS, build_model  # Jittor is imported by build_model, not here
from models.jittor_env import apply_defaults

from .engine.checkpoint import load_checkpoint
from .errors import UserError
from .jittor_doctor import check_environment


def config_parser(doc, with_set=False):
    """An `argparse` parser described by the first line of `doc`, with `--config` (and `--set`)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--config", required=True,
                        help="config module, e.g. local_configs.NYUDepthv2.DFormer_Large")
    if with_set:
        parser.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override config keys, e.g. --set "
                            "lr=1e-4 nepochs=50 (values are Python literals or strings)")
    return parser


def parse_assignments(items):
    """{key: value} of `--set KEY=VALUE ...`; a value is a Python literal, else a string."""
    values = {}
    for key, equals, text in (item.partition("=") for item in items or ()):
        if not equals:
            raise UserError(f"--set takes KEY=VALUE, not {key!r}")
        try:
            values[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key] = text
    return values


def load_config(name, overrides=None, assignments=()):
    """The `C` of config `name` (a module, local_configs.NYUDepthv2.DFormer_Large, or a .py file) with the
    command line's flags `overrides` (None: not given), then `--set` `assignments`; final from then on."""
    where = name if name.endswith(".py") else name.replace(".", os.sep) + ".py"
    try:
        if name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(os.path.basename(name)[:-3], name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(name)
        C = Config()
        C.update(module.C, config_name=name)
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise UserError(f"config {name!r} not found ({error}); configs are modules such as "
                        "local_configs.NYUDepthv2.DFormer_Large") from None
    except ConfigError as error:
        raise UserError(f"{error} (in {where})") from None
    try:
        C.update({key: value for key, value in (overrides or {}).items() if value is not None})
        C.update(parse_assignments(assignments))
    except ConfigError as error:
        raise UserError(f"{error} (on the command line; config {where})") from None
    return C.freeze()


def check_checkpoint(C, checkpoint):
    """Raise `UserError` early, naming the config's official file, when `checkpoint` does not exist."""
    if os.path.isfile(checkpoint):
        return
    spec = MODELS.get(C.backbone)
    official = spec and spec.trained_path(C.dataset_name)
    if not official:
        hint = f"train one first: bash train.sh --config {C.get('config_name') or '<config>'}"
    elif os.path.normpath(official) == os.path.normpath(checkpoint):
        hint = "download the official file (see checkpoints/README.md)"
    else:
        hint = f"this config's official file is {official} (see checkpoints/README.md)"
    raise UserError(f"checkpoint not found: {checkpoint}; {hint}")


def load_model(C, checkpoint):
    """The segmentor of `C` with the weights of `checkpoint`, in evaluation mode."""
    check_checkpoint(C, checkpoint)
    model = build_model(C)
    load_checkpoint(model, checkpoint)
    model.eval()
    return model


def check_precision(precision, flag=None):
    """Raise `UserError` for float16 work (`--precision amp|fp16`, or `flag`) without a GPU."""
    import jittor as jt

    if precision != "fp32" and not jt.has_cuda:
        raise UserError(f"{flag or '--precision ' + precision} is for GPUs: on the CPU, float16 convolutions and "
                        "products run as slow loops (the CPU kernels and oneDNN paths are float32)")


def main_guard(main):
    """Run `main()` with Jittor's defaults set and its setup checked; a `UserError` exits 2 with one message."""
    try:
        apply_defaults()
        problem = check_environment()
        if problem:
            raise UserError(problem)
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
