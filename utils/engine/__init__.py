"""The training engine: the training loop (`trainer.py`), loss, optimiser and schedule, evaluation,
metrics, checkpoints (and the torch-file reader), visualisation of predictions."""
