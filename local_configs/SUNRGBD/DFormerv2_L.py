"""DFormerv2_L on SUNRGBD (official local_configs/SUNRGBD/DFormerv2_L.py)."""
from local_configs._base_ import make_config

C = make_config("SUNRGBD", "DFormerv2_L", decoder_embed_dim=1024, drop_path_rate=0.27)
