"""The console script (`featcache.console:run`): quiet from its first instruction, and it hands the signals back."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Stands in for the command's module: its import is what a signal used to interrupt with a traceback.
_SLOW_CLI = """
import signal, sys, time
print("importing", flush=True)
if "--slow" in sys.argv:
    time.sleep(60)

def run():
    handler = signal.getsignal(signal.SIGINT)
    print("during", handler.__name__ if callable(handler) else handler.name, flush=True)
"""

_DRIVER = ("import signal\nfrom featcache.console import run\nrun()\n"
           "print('after', signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
           "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)")


def _start(tmp_path, *args):
    (tmp_path / "cli.py").write_text(_SLOW_CLI)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    return subprocess.Popen([sys.executable, "-c", _DRIVER, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_imports_ends_with_one_line(tmp_path, signum, code):
    child = _start(tmp_path, "--slow")
    try:
        assert child.stdout.readline() == "importing\n"
        child.send_signal(signum)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == code
    assert err == "interrupted\n"


def test_the_command_finds_the_start_up_handler_and_the_originals_come_back(tmp_path):
    child = _start(tmp_path)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.splitlines() == ["importing", "during while_starting", "after True True"]


def test_the_start_up_handler_leaves_an_ignored_signal_ignored(tmp_path):
    """Where Ctrl-C is ignored (nohup, a background job), the command leaves it ignored."""
    (tmp_path / "cli.py").write_text(_SLOW_CLI)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    run = subprocess.run([sys.executable, "-c", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                          "from featcache.console import run\nrun()"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["importing", "during SIG_IGN"]
