"""The old import path of `utils.engine.checkpoint`, for callers not yet moved (utils/train.py and tests)."""
import sys

from utils.engine import checkpoint

sys.modules[__name__] = checkpoint
