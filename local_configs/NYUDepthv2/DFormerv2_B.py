"""DFormerv2_B on NYUDepthv2 (official local_configs/NYUDepthv2/DFormerv2_B.py)."""
from local_configs._base_ import make_config

C = make_config("NYUDepthv2", "DFormerv2_B", drop_path_rate=0.2, num_workers=0)
