"""The SLURM / Kubernetes shard scripts of examples/, run locally as the schedulers would run them."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.fakedata import make_pku

REPO = Path(__file__).resolve().parents[1]


def _run(script, cwd, **env):
    full = dict(os.environ, FEATCACHE=f"{sys.executable} {REPO / 'cli.py'}", BACKBONE="resnet18", **env)
    return subprocess.run(["bash", str(REPO / "examples" / script), "--random-weights", "--image-size", "32",
                           "--workers", "0"] if script == "extract_shard.sh" else ["bash", str(REPO / "examples" /
                                                                                                  script)],
                          cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_array_shards_and_merge_equal_one_extraction(tmp_path):
    root = tmp_path / "db"
    make_pku(root)
    for index in range(3):  # three SLURM array tasks, the last one as a Kubernetes indexed pod
        env = {"SLURM_ARRAY_TASK_ID": str(index), "SLURM_ARRAY_TASK_COUNT": "3"} if index < 2 else \
            {"JOB_COMPLETION_INDEX": "2", "SHARDS": "3"}
        run = _run("extract_shard.sh", root, **env)
        assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (root / "shards").iterdir() if p.suffix == ".h5") == \
        ["shard0.h5", "shard1.h5", "shard2.h5"]
    (root / "shards" / "shard2.h5").rename(root / "later.h5")  # one array task has not finished (or failed)
    partial = _run("merge_shards.sh", root, OUT="merged.h5")
    assert partial.returncode == 2 and "rows not extracted yet" in partial.stderr, partial.stderr
    (root / "later.h5").rename(root / "shards" / "shard2.h5")
    merged = _run("merge_shards.sh", root, OUT="merged.h5")  # the partial merge is completed, not redone
    assert merged.returncode == 0, merged.stderr
    one = subprocess.run([sys.executable, str(REPO / "cli.py"), "extract", "--backbone", "resnet18",
                          "--random-weights", "--image-size", "32", "--workers", "0", "--quiet", "--cache", "one.h5"],
                         cwd=root, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    with h5py.File(root / "merged.h5", "r") as a, h5py.File(root / "one.h5", "r") as b:
        (bid,) = [k for k in ("resnet18.random/paper/32",) if f"features/{k}/emb" in a]
        assert a[f"features/{bid}/done"][()].all()
        np.testing.assert_allclose(a[f"features/{bid}/emb"][()], b[f"features/{bid}/emb"][()], atol=1e-5)
    missing = _run("extract_shard.sh", root)
    assert missing.returncode == 2 and "SLURM_ARRAY_TASK_ID" in missing.stderr
