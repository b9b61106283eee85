"""The README's tour runs exactly as typed, from an empty folder, offline."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tour_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- tour -->\s*```bash\n(.*?)```\s*<!-- /tour -->", text, re.S)
    assert block, "README.md lost its tour block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_tour_runs_as_typed(tmp_path):
    cwd = tmp_path
    commands = tour_commands()
    assert commands[0].startswith("featcache synth") and any(c.startswith("featcache predict") for c in commands)
    outputs = []
    for command in commands:
        words = shlex.split(command)
        if words[0] == "cd":
            cwd = cwd / words[1]
            continue
        assert words[0] == "featcache", command
        run = subprocess.run([sys.executable, str(REPO / "cli.py"), *words[1:]], cwd=cwd, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, (command, run.stdout[-1500:], run.stderr[-1500:])
        outputs.append(run.stdout)
    assert (cwd / "table.tex").read_text().startswith("\\begin{table}")
    assert len((cwd / "scores.csv").read_text().splitlines()) > 10
    assert "images from the cache" in outputs[-1]
    runs = list((cwd / "featcache-results").iterdir())
    assert len(runs) == 1 and (runs[0] / "report.md").is_file()
