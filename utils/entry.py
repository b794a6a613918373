"""What every entry point (train, eval, infer, latency) does first, written once.

`main_guard` checks the Jittor setup before Jittor is imported and turns `UserError`s into one
clear message instead of a traceback; `load_config` imports a config module by dotted name.
"""
import importlib
import os
import sys

from .errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, dataset_dir=None):
    """The `C` of config module `name` (e.g. local_configs.NYUDepthv2.DFormer_Large)."""
    if name.endswith(".py") or "/" in name:  # accept a file path too
        name = os.path.relpath(os.path.abspath(name), REPO_ROOT)[:-3].replace(os.sep, ".")
    try:
        C = importlib.import_module(name).C
    except ModuleNotFoundError as error:
        raise UserError(f"config {name!r} not found ({error}); configs are modules such as "
                        "local_configs.NYUDepthv2.DFormer_Large") from None
    C.config_name = name
    if dataset_dir:
        C.dataset_path = dataset_dir
    return C


def main_guard(main):
    """Run `main()`; exit 2 with one message on a `UserError` or an unusable Jittor setup."""
    try:
        from .jittor_doctor import check_environment

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
