"""The synthetic RGB-D data set: random furnished rooms (`rooms.py`), rendered and written in the
NYUDepthv2 layout (`generate.py`); `python -m utils.synthetic` is its command line."""
