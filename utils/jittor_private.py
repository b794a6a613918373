"""Jittor's private parts this code relies on, for the one Jittor release they were read from: the
loader's shuffle generator and MPI split of a last batch, the optimisers' group state, `n_step` and
`pre_step`/`post_step`, and its SIGCHLD handler. Importing this module under another release stops with one message.
"""
import signal

import jittor as jt
import numpy as np

from .errors import UserError

JITTOR_VERSION = "1.3.11.0"
if jt.__version__ != JITTOR_VERSION:
    raise UserError(f"Jittor {jt.__version__} is installed, but this code relies on internals of Jittor "
                    f"{JITTOR_VERSION} (utils/jittor_private.py): pip install jittor=={JITTOR_VERSION}")


def seed_shuffle(dataset, seed):
    """Seed the generator a `jittor.dataset.Dataset` draws its shuffle order from (no public call does)."""
    dataset._shuffle_rng = np.random.default_rng(seed)


def moments(group):
    """(m, v) of an optimiser's parameter group: AdamW's moments; SGD's [] and momentum buffers."""
    return group.get("m", []), group["values"]


def adamw_slots(group):
    """(parameter, gradient, v, m) of each parameter of an AdamW group, gradients as `pre_step` left them."""
    return zip(group["params"], group["grads"], group["values"], group["m"])


def repeated_in_last_batch(loader):
    """How many leading samples of this process's last batch another process also has: Jittor's MPI
    split (`Dataset._get_index_list`) shifts an uneven last batch's overhanging shares back."""
    last = loader.total_len % loader.batch_size
    if not jt.in_mpi or loader.drop_last or last == 0:
        return 0
    share = (last - 1) // jt.world_size + 1
    return min(share, max(0, share * jt.rank - (last - share)))


def survive_stopped_children():
    """Give SIGCHLD its default action back: Jittor's handler (set when its core loads) quits the process
    when a child stops or continues, so Ctrl-Z and `fg`, or pausing a worker, end the parent. Main thread only."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
