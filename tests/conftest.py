"""Shared test helpers: repository root on sys.path, Jittor defaults, the official key lists."""
import gzip
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from models.jittor_env import apply_defaults  # noqa: E402

apply_defaults()  # Jittor's environment defaults, before any test imports Jittor

with gzip.open(os.path.join(FIXTURES, "official_keys.json.gz"), "rt") as _file:
    OFFICIAL_KEYS = json.load(_file)  # {model name: {config, entries [(key, shape)], num_params...}}
