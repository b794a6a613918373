"""Training, evaluation, inference and timing utilities.

Importing this package applies the Jittor environment defaults (see `models/jittor_env.py`) before
anything imports Jittor, so every entry point and test gets them.
"""
from models.jittor_env import apply_defaults

apply_defaults()
