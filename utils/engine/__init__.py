"""The training engine: evaluation, metrics, checkpoints (and the torch-file reader), visualisation."""
