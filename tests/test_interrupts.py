"""Ctrl-C during a fit: exit 130 without aborting, workers leave the signal to the parent, a dropped signal
still stops the run, and an interrupted run leaves no half-written folder."""

import pytest
from click.testing import CliRunner

import cli
from regressors.cache_data import load_cache
from tests.fakedata import make_cache


@pytest.mark.slow  # a fresh process importing torch and dask, then an MLP fit to interrupt: about 20 s
def test_ctrl_c_during_a_local_dask_fit_exits_130_without_aborting(tmp_path):
    """The local cluster's workers are threads of the process, busy in torch: finalising the interpreter under them
    aborted (exit 134, "terminate called without an active exception", after screens of dask warnings)."""
    pytest.importorskip("dask.distributed")
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.fakedata import make_cache

    cache = make_cache(tmp_path, i2i_prompts=10, t2i_prompts=10, per=8, dim=512)  # MLP tasks of seconds
    repo = str(Path(__file__).resolve().parents[1])
    scratch = tmp_path / "dask-tmp"
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1", "DASK_TEMPORARY_DIRECTORY": str(scratch)}
    command = [sys.executable, "-m", "cli", "fit", "--cache", str(cache), "--mode", "nr,fr,pr", "--regressor", "mlp",
               "--backend", "dask", "--jobs", "2", "--repeats", "20", "--no-figures", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=_terminal_ctrl_c)  # CI may run the tests with Ctrl-C ignored
    lines = []
    for line in process.stdout:  # wait until the fitting has started
        lines.append(line)
        if "heads to fit" in line:
            break
    time.sleep(3)
    assert process.poll() is None, "".join(lines)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    output = "".join(lines) + rest
    assert process.returncode == 130, output
    assert rest.strip() == "interrupted", rest
    assert not (tmp_path / "out" / "results.json").exists()
    left = sorted(p.name for p in (scratch / "dask-scratch-space").iterdir() if not p.name.endswith(".lock"))
    assert left == [], left  # the scheduler's and workers' scratch folders


def test_a_worker_process_leaves_ctrl_c_to_the_parent(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group: loky workers caught inside a task printed
    KeyboardInterrupt tracebacks (two screens, seen 1 run in 3) under the parent's `interrupted`. A task run in
    another process than the one that dispatched it ignores SIGINT; in the dispatching process it does not."""
    import os
    import signal

    from regressors import cv

    data = load_cache(str(make_cache(tmp_path)))
    _, tasks = cv.plan(data, ["nr"], ["MOS_q"], ["ridge"], folds=2)
    before = signal.getsignal(signal.SIGINT)
    try:
        cv._run_task(0, tasks[0], "cpu", os.getpid())  # the parent itself (--jobs 1, threads): untouched
        assert signal.getsignal(signal.SIGINT) is before
        cv._run_task(0, tasks[0], "cpu", os.getpid() + 1)  # a worker process
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_that_python_dropped_still_stops_the_run_at_the_next_task(tmp_path, monkeypatch):
    """Python drops a KeyboardInterrupt raised inside a garbage-collection callback ("Exception ignored"); the
    CLI's handler also remembers the Ctrl-C, and the fitting loop stops at the next task (a dask run went on to
    its end). Simulated: the first task receives the signal and nothing raises."""
    import signal

    from featcache import interrupts
    from regressors import cv

    cache = make_cache(tmp_path)
    real = cv.fit_members
    calls = []

    def lost_interrupt(*args):
        calls.append(1)
        if len(calls) == 1:
            with pytest.raises(KeyboardInterrupt):  # the handler raises; here it is swallowed, as in a callback
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        return real(*args)

    monkeypatch.setattr(cv, "fit_members", lost_interrupt)
    runner_handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI may ignore it)
    before = signal.getsignal(signal.SIGINT)
    try:
        result = CliRunner().invoke(cli.main, ["fit", "--cache", str(cache), "--mode", "nr,pr", "--regressor", "ridge",
                                               "--jobs", "1", "--no-figures", "--quiet", "--out", str(tmp_path / "o")])
    finally:
        after = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, runner_handler)
    assert result.exit_code == 130 and result.output.strip().splitlines()[-1] == "interrupted", result.output
    assert len(calls) == 1 and not (tmp_path / "o").exists()
    assert after is before  # handlers back for the caller
    interrupts.check()  # and the interruption forgotten: an in-process caller's next call is not interrupted


def test_a_second_signal_soon_after_the_first_is_the_same_request(monkeypatch):
    """A double press, or SLURM's SIGTERM right after a Ctrl-C: raising again cut the first one's clean-up short
    (joblib printed a resource_tracker warning under the one line)."""
    import signal

    from featcache import interrupts

    now = [100.0]
    monkeypatch.setattr(interrupts.time, "monotonic", lambda: now[0])
    interrupts.reset()
    try:
        with pytest.raises(KeyboardInterrupt) as first:
            interrupts.on_signal(signal.SIGINT, None)
        assert type(first.value) is KeyboardInterrupt
        now[0] += 0.05
        assert interrupts.on_signal(signal.SIGTERM, None) is None  # taken as the same request
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()  # the loops still see the first
        now[0] += interrupts.SECOND_SIGNAL_SECONDS
        with pytest.raises(interrupts.Terminated):  # a later one is a new request
            interrupts.on_signal(signal.SIGTERM, None)
    finally:
        interrupts.reset()


def test_the_command_line_keeps_signals_ignored_while_its_process_ends(tmp_path, monkeypatch):
    """Run from the process's own command line (click parses sys.argv), the command ends the process: after a
    Ctrl-C, signals stay ignored until it is gone (a second one must not change the exit 130). In-process callers
    get their handlers back."""
    import signal
    import sys

    from regressors import cv

    cache = make_cache(tmp_path)
    monkeypatch.setattr(cv, "fit_members", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    command = ["fit", "--cache", str(cache), "--regressor", "ridge", "--jobs", "1", "--no-figures", "--quiet",
               "--out", str(tmp_path / "o")]
    runner = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI may ignore Ctrl-C)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert CliRunner().invoke(cli.main, command).exit_code == 130
        assert {s: signal.getsignal(s) for s in before} == before
        monkeypatch.setattr(sys, "argv", ["featcache", *command])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        assert exited.value.code == 130
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for s, handler in runner.items():
            signal.signal(s, handler)


def _terminal_ctrl_c() -> None:
    """In a child about to exec: Ctrl-C handled as in a terminal, even when the test runner was started with SIGINT
    ignored (a background job of a non-interactive shell), which the child would inherit."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_fit_leaves_no_run_folder_holding_only_its_head(tmp_path, monkeypatch):
    """--save-head into the run's own new folder: Ctrl-C after the head was saved, before the results were
    written, left the folder with the head alone, and the same command then refused it as not empty."""
    import signal

    import regressors.report

    cache = make_cache(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(regressors.report, "write_results", interrupted)
    command = ["fit", "--cache", str(cache), "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge", "--folds",
               "3", "--quiet", "--no-figures", "--out", str(tmp_path / "run"), "--save-head",
               str(tmp_path / "run" / "h.safetensors")]
    runner_handler = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert CliRunner().invoke(cli.main, command).exit_code == 130
    finally:
        signal.signal(signal.SIGINT, runner_handler)
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()  # an empty folder made beforehand is the run's own too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert CliRunner().invoke(cli.main, command).exit_code == 130
    finally:
        signal.signal(signal.SIGINT, runner_handler)
    assert not any((tmp_path / "run").iterdir())
    monkeypatch.undo()
    done = CliRunner().invoke(cli.main, command)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "run" / "h.safetensors").is_file() and (tmp_path / "run" / "results.json").is_file()
