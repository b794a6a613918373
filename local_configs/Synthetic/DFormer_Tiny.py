"""DFormer-Tiny on the synthetic RGB-D rooms of `utils/synthetic/`, trained from scratch."""
from local_configs._base_ import make_config

C = make_config("Synthetic", "DFormer-Tiny", pretrained_model=None)
