"""What every entry point (train, eval, infer, latency) does first, written once.

`main_guard` checks the Jittor setup before Jittor is imported and turns `UserError`s into one
clear message instead of a traceback; `load_config` imports a config module by dotted name.
"""
import importlib
import importlib.util
import os
import sys

from .errors import UserError


def load_config(name, dataset_dir=None):
    """The `C` of config `name`: a module (local_configs.NYUDepthv2.DFormer_Large) or a .py file."""
    try:
        if name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(os.path.basename(name)[:-3], name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(name)
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise UserError(f"config {name!r} not found ({error}); configs are modules such as "
                        "local_configs.NYUDepthv2.DFormer_Large") from None
    C = module.C
    C.config_name = name
    if dataset_dir:
        C.dataset_path = dataset_dir
    return C


def load_model(C, checkpoint):
    """The segmentor of `C` with the weights of `checkpoint`, in evaluation mode."""
    from models import build_model
    from .checkpoint import load_checkpoint

    model = build_model(C)
    load_checkpoint(model, checkpoint)
    model.eval()
    return model


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
