"""ONNX export written from the model's own modules (`graph.py`, `layers.py`, `handlers.py`) and the
ONNX Runtime backend (`backend.py`); `utils/export_onnx.py` is the command line."""
