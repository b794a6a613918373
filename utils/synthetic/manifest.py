"""Which settings a synthetic data set was made with (its `synthetic.json`), and whether they fit a
config: a data set whose image size, counts, seed or classes differ from the config's stops with the
command that regenerates it, instead of silently training on stale data.
"""
import json
import os

from utils.errors import UserError

SETTINGS_FILE = "synthetic.json"
MISSING = "it does not exist"


def config_settings(C):
    """The `synthetic.json` content that config `C` needs: `generate_dataset`'s arguments."""
    return dict(num_train=C.num_train_imgs, num_test=C.num_eval_imgs, height=C.image_height,
                width=C.image_width, seed=C.seed, class_names=list(C.class_names))


def stale_settings(C):
    """None when `C.dataset_path` holds the data set `C` needs, else what differs (a sentence).

    Raises `UserError` for a folder `generate.py` did not write, which is never replaced.
    """
    path = os.path.join(C.dataset_path, SETTINGS_FILE)
    if not os.path.isfile(path):
        if os.path.exists(C.dataset_path):
            raise UserError(f"{C.dataset_path} exists but was not written by utils.synthetic (no {SETTINGS_FILE}); "
                            "delete it or point the config elsewhere to generate the synthetic data")
        return MISSING
    with open(path) as f:
        found = json.load(f)
    wanted = config_settings(C)
    changed = [f"{key} {found.get(key)} instead of {value}" for key, value in wanted.items() if found.get(key) != value]
    return f"it was generated with {', '.join(changed)}" if changed else None


def check_synthetic_dataset(C):
    """Raise `UserError` with the command to run unless `C.dataset_path` holds the data `C` needs."""
    problem = stale_settings(C)
    command = f"python -m utils.synthetic --config {C.get('config_name') or '<this config>'}"
    if problem == MISSING:
        raise UserError(f"synthetic data set not found: {C.dataset_path}. Generate it with: {command}")
    if problem:
        raise UserError(f"the synthetic data set {C.dataset_path} does not fit the config: {problem}. "
                        f"Regenerate it with: {command}")
