"""DFormer-Large on NYUDepthv2 (official local_configs/NYUDepthv2/DFormer_Large.py)."""
from local_configs._base_ import make_config

C = make_config("NYUDepthv2", "DFormer-Large", drop_path_rate=0.15)
