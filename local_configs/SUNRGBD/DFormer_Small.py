"""DFormer-Small on SUNRGBD (official local_configs/SUNRGBD/DFormer_Small.py)."""
from local_configs._base_ import make_config

C = make_config("SUNRGBD", "DFormer-Small")
