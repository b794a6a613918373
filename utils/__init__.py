"""Everything around the models, by job: the command lines (`train.py`, `eval.py`, `infer.py`,
`latency.py`, `export_onnx.py`) and what they share (`entry.py`, `errors.py`, `files.py`,
`jittor_private.py`); `engine/` (the training loop, loss, optimiser, evaluation, metrics,
checkpoints), `dataloader/` (datasets, transforms), `speed/` (FLOPs, latency, throughput),
`synthetic/` (the demo data set), `onnx_export/` (ONNX export and runtime), `jittor_doctor/`
(checks and patches the installed Jittor), `tools/` (maintainer tools).
Importing it has no side effects.
"""
