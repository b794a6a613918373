"""Shared test helpers: repository root on sys.path, Jittor defaults, the official key lists, seed 0."""
import gzip
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from models.jittor_env import apply_defaults  # noqa: E402

apply_defaults()  # Jittor's environment defaults, before any test imports Jittor

with gzip.open(os.path.join(FIXTURES, "official_keys.json.gz"), "rt") as _file:
    OFFICIAL_KEYS = json.load(_file)  # {model name: {config, entries [(key, shape)], num_params...}}


@pytest.fixture(autouse=True)
def seeded():
    """Jittor seeds its generator (and numpy's) from the clock at import: every test starts from
    seed 0, so the layers and models it builds get the same weights on every run."""
    import jittor as jt

    jt.set_global_seed(0)
