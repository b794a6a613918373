"""Python-class configs: `importlib.import_module("local_configs.NYUDepthv2.DFormer_Large").C`."""
