"""The command line as a whole: its entry point, one option name per thing, the layering, Ctrl-C and SIGTERM."""

import ast
import configparser
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cli
from tests.fakedata import make_cache

REPO = Path(__file__).resolve().parents[1]


def test_the_console_script_is_the_click_group():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    scripts = [line for line in config["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    assert [s.replace(" ", "") for s in scripts] == ["featcache=cli:main"]
    assert isinstance(cli.main, click.Group)


def test_every_dependency_states_a_lower_bound_and_no_upper_one():
    """make test-min pins each `>=` bound with `==`; an upper bound would trip a user's newer environment."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    requirements = config["options"]["install_requires"].split()
    assert len(requirements) > 10
    assert [r for r in requirements if not re.fullmatch(r"[A-Za-z0-9_.-]+>=[0-9][0-9.]*", r)] == []


def test_stage_1_imports_neither_the_command_line_nor_stage_2():
    offenders = []
    for path in sorted((REPO / "featcache").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("cli", "regressors")]
    assert offenders == []


def _options(command: click.Command) -> set[str]:
    return {name for p in command.params if isinstance(p, click.Option) for name in p.opts if name.startswith("--")}


def test_every_command_names_its_cache_with_the_cache_option():
    takes_cache = {name for name, command in cli.main.commands.items()
                   if any(p.name == "cache" for p in command.params)}
    assert takes_cache == {"extract", "merge", "info", "repair", "fit", "bench", "predict"}
    for name in takes_cache:
        (param,) = [p for p in cli.main.commands[name].params if p.name == "cache"]
        assert isinstance(param, click.Option) and param.opts == ["--cache"], name


def test_one_option_name_for_each_thing():
    """A list option is named in the singular wherever a command takes it (--mode nr,fr), never once each way."""
    names = set().union(*(_options(c) for c in cli.main.commands.values()))
    assert sorted(n for n in names if n.endswith("s") and n[:-1] in names) == []


def test_info_and_repair_read_the_cache_given_by_option_or_from_the_current_folder(tmp_path, monkeypatch):
    cache = make_cache(tmp_path)
    runner = CliRunner()
    shown = runner.invoke(cli.main, ["info", "--cache", str(cache)])
    assert shown.exit_code == 0 and "toy.random/paper/4" in shown.output, shown.output
    assert runner.invoke(cli.main, ["info", str(cache)]).exit_code == 2  # no second spelling
    repaired = runner.invoke(cli.main, ["repair", "--cache", str(cache)])
    assert repaired.exit_code == 0 and repaired.output == f"{cache}: nothing to repair\n", repaired.output
    cache.rename(tmp_path / "featcache.h5")
    monkeypatch.chdir(tmp_path)
    shown = runner.invoke(cli.main, ["info"])
    assert shown.exit_code == 0 and "toy.random/paper/4" in shown.output, shown.output
    assert runner.invoke(cli.main, ["repair"]).output == "featcache.h5: nothing to repair\n"


_SLOW_FIT = textwrap.dedent("""
    import sys, time
    from regressors import cv
    def fit_members(*args):
        print("fitting", flush=True)
        time.sleep(60)
    cv.fit_members = fit_members
    sys.argv = ["featcache", *sys.argv[1:]]
    import cli
    cli.main()
""")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130,
                                                                             marks=pytest.mark.slow)])
@pytest.mark.slow  # over 0.7 s: run by CI and make test-all
def test_a_signal_during_a_command_ends_it_with_one_line(tmp_path, signum, code):
    cache = make_cache(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _SLOW_FIT, "fit", "--cache", str(cache), "--mode", "nr",
                              "--regressor", "ridge", "--jobs", "1", "--quiet", "--no-figures", "--out",
                              str(tmp_path / "out")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    try:
        assert child.stdout.readline() == "fitting\n", child.stderr.read()
        child.send_signal(signum)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert (child.returncode, err) == (code, "interrupted\n")
    assert not (tmp_path / "out").exists()  # the run folder made for the results is removed again
