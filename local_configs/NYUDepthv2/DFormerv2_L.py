"""DFormerv2_L on NYUDepthv2 (official local_configs/NYUDepthv2/DFormerv2_L.py)."""
from local_configs._base_ import make_config

C = make_config("NYUDepthv2", "DFormerv2_L", decoder_embed_dim=1024, batch_size=12, drop_path_rate=0.3, num_workers=0)
