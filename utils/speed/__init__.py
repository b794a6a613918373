"""Measuring the models: parameters and FLOPs (`flops.py`, behind `benchmark.py`), latency and
training throughput (`timing.py`, behind `utils/latency.py`)."""
