"""ONNX export written from the model's own modules (`export.py`, with the graph builder `graph.py`
and the per-module handlers `layers.py` and `handlers.py`) and the ONNX Runtime backend
(`backend.py`); `utils/export_onnx.py` is the command line."""
