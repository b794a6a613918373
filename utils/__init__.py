"""Everything around the models, by job: the command lines (`train.py`, `eval.py`, `infer.py`,
`latency.py`, `export_onnx.py`) and what they share (`entry.py`, `errors.py`); `engine/`
(evaluation, metrics, checkpoints), `dataloader/` (datasets, transforms), `synthetic/` (the demo
data set), `onnx_export/` (ONNX export and runtime), `jittor_doctor/` (checks and patches the
installed Jittor). Importing it has no side effects.
"""
