"""DFormerv2_S on NYUDepthv2 (official local_configs/NYUDepthv2/DFormerv2_S.py)."""
from local_configs._base_ import make_config

C = make_config("NYUDepthv2", "DFormerv2_S", batch_size=16, drop_path_rate=0.25, num_workers=0)
