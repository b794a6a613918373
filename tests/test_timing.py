"""Timing past Jittor's preparation phase (utils/speed/timing.py): the warm-up runs until an
iteration compiles no new op, the timed loop runs with the parallel compiler off, and the flag
is restored afterwards, also when a run fails."""
import pytest


WARM_UP_SCRIPT = """
import json
from models.jittor_env import apply_defaults
apply_defaults()
import jittor as jt
from utils.speed.timing import warm_up
dims = iter([4, 5, 5, 5, 5])  # the second run needs kernels of a new rank, later runs none
step = lambda: (jt.ones((2,) * next(dims), dtype="int16") ^ 3).sync()
print(json.dumps([warm_up(step, 1), warm_up(lambda: (jt.ones((2,) * 5, dtype="int16") ^ 3).sync(), 3)]))
"""


def test_warm_up_stops_once_no_op_compiles():
    """In a process of its own: Jittor's log capture records nothing in the process that compiled
    Jittor's core (a cold cache, as on CI, compiles it in the test process)."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run([sys.executable, "-c", WARM_UP_SCRIPT], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    counts, compiled = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts[0] > 0 and counts[1:] == [0], counts
    assert compiled == [0, 0]  # at least 3 runs


def test_warm_up_gives_up_on_ops_that_never_stop_compiling(monkeypatch):
    from utils.speed import timing

    monkeypatch.setattr(timing, "ops_compiled", lambda step: 1)
    assert len(timing.warm_up(lambda: None, 4)) == 3 + timing.MAX_EXTRA_WARMUP


class Recorder:
    """A stand-in model: records the parallel compiler flag at every call; can fail at call `fail_at`."""

    def __init__(self, fail_at=None):
        self.flags, self.fail_at = [], fail_at

    def eval(self):
        return self

    def __call__(self, rgb, depth):
        import jittor as jt

        self.flags.append(jt.flags.use_parallel_op_compiler)
        if len(self.flags) == self.fail_at:
            raise RuntimeError("failed run")
        return rgb * 2


def test_timed_loop_runs_without_the_parallel_compiler():
    import jittor as jt

    from utils.speed.timing import measure_latency

    before = jt.flags.use_parallel_op_compiler
    assert before > 0
    model = Recorder()
    run = measure_latency(model, 1, 8, 8, warmup=2, iters=3)
    assert len(run["times_s"]) == 3
    assert model.flags[0] == before  # the first warm-up run compiles in parallel
    assert model.flags[-3:] == [0, 0, 0]  # the timed runs prepare each op once
    assert jt.flags.use_parallel_op_compiler == before


def test_flag_restored_after_a_failed_run():
    import jittor as jt

    from utils.speed.timing import measure_latency

    before = jt.flags.use_parallel_op_compiler
    with pytest.raises(RuntimeError, match="failed run"):
        measure_latency(Recorder(fail_at=4), 1, 8, 8, warmup=2, iters=3)
    assert jt.flags.use_parallel_op_compiler == before


def test_cudnn_algorithm_cache_sized_only_with_cudnn(monkeypatch):
    import jittor as jt

    from models import jittor_env

    sizes = []

    class FakeCudnn:
        @staticmethod
        def set_algorithm_cache_size(size):
            sizes.append(size)

    monkeypatch.setattr(jt.compile_extern, "cudnn", None, raising=False)
    jittor_env.size_cudnn_algorithm_cache()
    assert sizes == []
    monkeypatch.setattr(jt.compile_extern, "cudnn", FakeCudnn)
    jittor_env.size_cudnn_algorithm_cache()
    assert sizes == [jittor_env.CUDNN_ALGORITHM_CACHE]
