"""ONNX export written from the model's own modules (`export.py`, with the graph builder `graph.py`,
the `Exporter` of `handlers.py` and each layer's `onnx` rule in `models/`) and the ONNX Runtime
backend (`backend.py`); `utils/export_onnx.py` is the command line."""
