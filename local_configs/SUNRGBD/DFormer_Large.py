"""DFormer-Large on SUNRGBD (official local_configs/SUNRGBD/DFormer_Large.py)."""
from local_configs._base_ import make_config

C = make_config("SUNRGBD", "DFormer-Large", drop_path_rate=0.2)
