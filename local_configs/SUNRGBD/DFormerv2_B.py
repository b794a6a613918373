"""DFormerv2_B on SUNRGBD (official local_configs/SUNRGBD/DFormerv2_B.py)."""
from local_configs._base_ import make_config

C = make_config("SUNRGBD", "DFormerv2_B", decoder_embed_dim=1024)
