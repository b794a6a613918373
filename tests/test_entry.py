"""What every command prints: only our own messages, Jittor's warnings, and its info lines on request."""
import os
import subprocess
import sys

from conftest import ROOT

WARNINGS = """
from models.jittor_env import apply_defaults
apply_defaults()
import jittor, jittor_utils
jittor_utils.LOG.w("python-side warning")
jittor_utils.cc.log("x.cc:1", "w", 0, "c++-side warning")
"""


def run(args, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("log_silent", "log_v", "log_vprefix")}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**environ, **env})
    return done.returncode, done.stdout, done.stderr


def test_missing_checkpoint_prints_one_line():
    code, out, err = run(["utils/eval.py", "--config", "local_configs.NYUDepthv2.DFormer_Tiny",
                          "--checkpoint", "checkpoints/trained/NYUv2_DFormer_Tiny.pth"])
    assert code == 2 and out == ""
    assert err == ("error: checkpoint not found: checkpoints/trained/NYUv2_DFormer_Tiny.pth; "
                   "download the official file (see checkpoints/README.md)\n")
    code, _, err = run(["utils/eval.py", "--config", "local_configs.SUNRGBD.DFormerv2_B", "--checkpoint", "x.pth"])
    assert code == 2 and err == ("error: checkpoint not found: x.pth; this config's official file is "
                                 "checkpoints/trained/DFormerv2_Base_SUNRGBD.pth (see checkpoints/README.md)\n")
    code, _, err = run(["utils/infer.py", "--config", "local_configs.Synthetic.DFormer_Tiny", "--checkpoint", "x.pkl",
                        "--split", "test", "--output-dir", "output/never"])
    assert code == 2 and err == ("error: checkpoint not found: x.pkl; train one first: "
                                 "bash train.sh --config local_configs.Synthetic.DFormer_Tiny\n")


def test_jittor_info_lines_hidden_warnings_kept_user_variables_respected():
    code, out, err = run(["-c", WARNINGS])
    assert code == 0 and "[i " not in out + err
    assert "python-side warning" in err and "c++-side warning" in err
    code, out, err = run(["-c", WARNINGS], log_v="0")  # the user's own setting: Jittor's usual output
    assert code == 0 and "[i " in err and "python-side warning" in err


def test_another_jittor_release_stops_with_one_line():
    """The Jittor internals of utils/jittor_private.py are checked against the installed release when
    the engine is imported, as the command lines import it."""
    script = ("from utils.entry import main_guard\n"
              "def main():\n"
              "    import jittor\n"
              "    jittor.__version__ = '1.3.12.0'\n"
              "    import utils.engine.trainer\n"
              "main_guard(main)\n")
    code, out, err = run(["-c", script])
    assert code == 2 and out == ""
    assert err == ("error: Jittor 1.3.12.0 is installed, but this code relies on internals of Jittor 1.3.11.0 "
                   "(utils/jittor_private.py): pip install jittor==1.3.11.0\n")


PAUSED_CHILD = """
import signal, subprocess, sys, time
from models.jittor_env import apply_defaults
apply_defaults()
import jittor
if sys.argv[1] == "survive":
    from utils.jittor_private import survive_stopped_children
    survive_stopped_children()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
print("child", child.pid, flush=True)
time.sleep(0.5)
child.send_signal(signal.SIGSTOP)
time.sleep(0.5)
child.send_signal(signal.SIGCONT)
print("parent alive, child exit", child.wait(), flush=True)
"""


def test_a_paused_worker_does_not_end_its_parent():
    """A tool that runs workers (utils/tools/train_vs_official.py) survives one of them being
    stopped and continued (Ctrl-Z and `fg`, or a pause): Jittor's own SIGCHLD handler quits then."""
    import signal

    code, out, _ = run(["-c", PAUSED_CHILD, "survive"])
    assert code == 0 and out.splitlines()[1:] == ["parent alive, child exit 0"]
    code, out, _ = run(["-c", PAUSED_CHILD, "jittor"])  # Jittor's handler: the parent quits at the stop
    try:
        os.kill(int(out.split()[1]), signal.SIGKILL)  # the child stays stopped, its parent gone
    except ProcessLookupError:
        pass
    assert code != 0 and "parent alive" not in out


def test_misspelt_config_key_prints_one_line(tmp_path):
    """A key no config has, in a config file or in --set, stops with one line naming it, where it
    was and the closest key."""
    config = tmp_path / "my_config.py"
    config.write_text('from local_configs._base_ import make_config\n\n'
                      'C = make_config("Synthetic", "DFormer-Tiny", nepoch=100)\n')
    code, out, err = run(["utils/train.py", "--config", str(config)])
    assert code == 2 and out == ""
    assert err == f"error: config key 'nepoch' is unknown; did you mean 'nepochs'? (in {config})\n"
    config.write_text('from local_configs._base_ import make_config\n\n'
                      'C = make_config("Synthetic", "DFormer-Tiny")\nC.drop_path = 0.3\n')
    code, out, err = run(["utils/train.py", "--config", str(config)])
    assert code == 2 and err == f"error: config key 'drop_path' is unknown; did you mean 'drop_path_rate'? (in {config})\n"
    code, out, err = run(["utils/train.py", "--config", "local_configs.Synthetic.DFormer_Tiny", "--set", "lr=1e-3",
                          "warmup_epoch=2"])
    assert code == 2 and err == ("error: config key 'warmup_epoch' is unknown; did you mean 'warm_up_epoch'? "
                                 "(on the command line; config local_configs/Synthetic/DFormer_Tiny.py)\n")
    code, out, err = run(["utils/eval.py", "--config", "local_configs.Synthetic.DFormer_Tiny", "--checkpoint", "x.pkl",
                          "--set", "background=0"])
    assert code == 2 and err.startswith("error: config key 'background' is not a key: the ignore label is IGNORE_LABEL")
