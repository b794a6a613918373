"""DFormer-Base on SUNRGBD (official local_configs/SUNRGBD/DFormer_Base.py)."""
from local_configs._base_ import make_config

C = make_config("SUNRGBD", "DFormer-Base")
