"""The old import path of `utils.engine.evaluate`, for callers not yet moved (utils/train.py and tests)."""
import sys

from utils.engine import evaluate

sys.modules[__name__] = evaluate
