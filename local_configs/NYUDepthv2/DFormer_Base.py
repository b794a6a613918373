"""DFormer-Base on NYUDepthv2 (official local_configs/NYUDepthv2/DFormer_Base.py)."""
from local_configs._base_ import make_config

C = make_config("NYUDepthv2", "DFormer-Base")
