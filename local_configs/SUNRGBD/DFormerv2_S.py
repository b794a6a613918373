"""DFormerv2_S on SUNRGBD (official local_configs/SUNRGBD/DFormerv2_S.py)."""
from local_configs._base_ import make_config

C = make_config("SUNRGBD", "DFormerv2_S", decoder_embed_dim=1024)
