"""`python -m utils.synthetic`: write the synthetic data set (see `generate.py`)."""
from utils.entry import main_guard
from utils.synthetic.generate import main

main_guard(main)
