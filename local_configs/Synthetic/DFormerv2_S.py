"""DFormerv2_S on the synthetic RGB-D rooms of `utils/synthetic/`, trained from scratch."""
from local_configs._base_ import make_config

C = make_config("Synthetic", "DFormerv2_S", pretrained_model=None)
