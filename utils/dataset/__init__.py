"""The old import path of `utils.dataloader.dataset`, for callers not yet moved (utils/train.py and tests)."""
import sys

from utils.dataloader import dataset

sys.modules[__name__] = dataset
