"""The data loader: RGB-D datasets (`dataset.py`) and their transforms (`transforms.py`), as
upstream's `utils/dataloader/`."""
