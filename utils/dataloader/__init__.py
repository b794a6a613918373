"""The data loader: RGB-D datasets and their transforms, as upstream's `utils/dataloader/`."""
