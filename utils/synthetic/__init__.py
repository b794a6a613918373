"""The synthetic RGB-D data set: random furnished rooms (`rooms.py`), rendered and written in the
NYUDepthv2 layout (`generate.py`), with the settings they were made with (`manifest.py`, which the
data loader checks); `python -m utils.synthetic` is its command line."""
