"""DFormer-Tiny on SUNRGBD (official local_configs/SUNRGBD/DFormer_Tiny.py)."""
from local_configs._base_ import make_config

C = make_config("SUNRGBD", "DFormer-Tiny")
