"""Maintainer tools, out of the reading path: the GPU check (`python -m utils.tools.gpu_check`: `gpu_check.py`
the steps, `gpu_graph.py` the op checks, `gpu_jittor.py` the Jittor side, `official.py` the official
model's process, `gpu_report.py` the report), training and inference speed next to the official
model (`speed_vs_official.py`) and the deterministic stand-in weights and inputs the tests and checks use
(`stand_in_weights.py`)."""
