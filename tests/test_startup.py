"""Start-up of `featcache extract`: weights hashes remembered between runs, timm imported without torch._dynamo."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featcache.backbones import weights as weights_module

REPO = Path(__file__).resolve().parents[1]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_weights_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    reads = []
    real = weights_module.sha256_file
    monkeypatch.setattr(weights_module, "sha256_file", lambda path: reads.append(path) or real(path))
    checkpoint = tmp_path / "w.pth"
    checkpoint.write_bytes(b"weights" * 1000)
    first = weights_module.weights_sha256(checkpoint)
    assert first == real(checkpoint) and len(reads) == 1
    assert weights_module.weights_sha256(checkpoint) == first and len(reads) == 1  # not read again
    memo = tmp_path / "cache" / "featcache" / "weights-sha256.json"
    assert json.loads(memo.read_text())[str(checkpoint.resolve())]["sha256"] == first

    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: hashed again
    assert weights_module.weights_sha256(checkpoint) == first and len(reads) == 2
    checkpoint.write_bytes(b"other weights")  # other size (and content)
    assert weights_module.weights_sha256(checkpoint) == real(checkpoint) != first and len(reads) == 3

    # same size, the old modification time put back (cp -p, touch -r, rsync -a): the change time tells
    stat = checkpoint.stat()
    time.sleep(0.01)
    checkpoint.write_bytes(b"OTHER weights")
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert checkpoint.stat().st_size == stat.st_size and checkpoint.stat().st_mtime_ns == stat.st_mtime_ns
    assert weights_module.weights_sha256(checkpoint) == real(checkpoint) != sha256(b"other weights") and len(reads) == 4
    # replaced by a rename (another inode), size and modification time kept
    stat = checkpoint.stat()
    (tmp_path / "new.pth").write_bytes(b"0ther weights")
    os.utime(tmp_path / "new.pth", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(tmp_path / "new.pth", checkpoint)
    assert weights_module.weights_sha256(checkpoint) == sha256(b"0ther weights") and len(reads) == 5
    assert weights_module.weights_sha256(checkpoint) == sha256(b"0ther weights") and len(reads) == 5  # remembered

    def changing(path):  # the file changes while it is hashed: the hash is returned, not remembered
        digest = real(path)
        os.utime(path, ns=(0, 0))
        return digest

    monkeypatch.setattr(weights_module, "sha256_file", lambda path: reads.append(path) or changing(path))
    os.utime(checkpoint, ns=(1, 1))
    assert weights_module.weights_sha256(checkpoint) == sha256(b"0ther weights") and len(reads) == 6
    assert json.loads(memo.read_text())[str(checkpoint.resolve())]["mtime_ns"] != 1  # the stale stat not stored
    monkeypatch.setattr(weights_module, "sha256_file", lambda path: reads.append(path) or real(path))
    assert weights_module.weights_sha256(checkpoint) == sha256(b"0ther weights") and len(reads) == 7

    memo.write_text("{not json")  # corrupt: ignored, then rewritten whole
    assert weights_module.weights_sha256(checkpoint) == real(checkpoint) and len(reads) == 8
    assert list(json.loads(memo.read_text())) == [str(checkpoint.resolve())]
    assert [p.name for p in memo.parent.iterdir()] == ["weights-sha256.json"]  # no temporary file left


def test_state_hash_is_remembered_per_file_hash_and_architecture(tmp_path, monkeypatch):
    """The loaded tensors' hash (provenance) is computed once per (file sha256, architecture, versions); weights
    without a file hash (hub, random) are hashed every time."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []

    def compute(value):
        return lambda: calls.append(value) or value

    a, b = "a" * 64, "b" * 64
    from_file = weights_module.WeightsChoice("file", "file-x", "/w.pth", a)
    assert weights_module.remembered_state_sha256(from_file, "resnet18", compute(b)) == b and calls == [b]
    assert weights_module.remembered_state_sha256(from_file, "resnet18", compute("c" * 64)) == b and calls == [b]
    assert weights_module.remembered_state_sha256(from_file, "resnet50", compute(a)) == a and calls == [b, a]
    other_file = weights_module.WeightsChoice("file", "file-y", "/w.pth", b)
    assert weights_module.remembered_state_sha256(other_file, "resnet18", compute(a)) == a and len(calls) == 3
    random = weights_module.WeightsChoice("random", "random")
    for _ in range(2):
        weights_module.remembered_state_sha256(random, "resnet18", compute(a))
    assert len(calls) == 5


def test_an_unwritable_memo_only_costs_the_hash(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    checkpoint = tmp_path / "w.pth"
    checkpoint.write_bytes(b"weights")
    assert weights_module.weights_sha256(checkpoint) == weights_module.sha256_file(checkpoint)


@pytest.mark.slow  # a fresh interpreter importing torch and timm: 7 s
def test_timm_imports_without_dynamo_and_dynamo_stays_usable():
    script = """
import sys, torch
from featcache.fastimport import import_timm_without_dynamo
import_timm_without_dynamo()
assert "timm" in sys.modules and "torch._dynamo" not in sys.modules
from featcache.backbones import load_backbone
backbone = load_backbone("resnet18", random_weights=True, image_size=32)
backbone.extractor()(torch.zeros(1, 3, 32, 32)); backbone.transform()
assert "torch._dynamo" not in sys.modules  # an eager forward never needs it
import torch._dynamo
assert hasattr(torch._dynamo, "optimize") and type(sys.modules["torch._dynamo"]).__name__ == "module"
from timm.models.naflexvit import NaFlexRopeIterator  # a method decorated with torch.compiler.disable
assert torch.compiler.disable(lambda x: x + 1)(1) == 2
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_deferred_modules_are_imported_on_first_use_and_missing_ones_still_fail(tmp_path, monkeypatch):
    """featcache.fastimport's stand-ins: a module named by an import statement inside a hooked module is not
    imported until an attribute is used; afterwards `import` gives the real module; a missing one still fails."""
    from featcache import fastimport

    (tmp_path / "fc_heavy.py").write_text("import fc_log\nfc_log.imported.append('fc_heavy')\nVALUE = 42\n")
    (tmp_path / "fc_log.py").write_text("imported = []\n")
    (tmp_path / "fc_pkg").mkdir()
    (tmp_path / "fc_pkg" / "__init__.py").write_text(
        "import fc_heavy\ntry:\n    import fc_missing\nexcept ImportError:\n    fc_missing = None\n"
        "def value():\n    return fc_heavy.VALUE\n")
    (tmp_path / "fc_pkg" / "sub.py").write_text("import fc_heavy as heavy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fc_heavy", "fc_log", "fc_pkg", "fc_pkg.sub", "fc_missing"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(fastimport, "_single_threaded", lambda: True)  # earlier tests may leave pool threads
    finder = fastimport._DeferWhileImporting(("fc_pkg", "fc_pkg.sub"), ("fc_heavy", "fc_missing"))
    sys.meta_path.insert(0, finder)
    try:
        import fc_log
        import fc_pkg
        import fc_pkg.sub
    finally:
        sys.meta_path.remove(finder)
    assert fc_pkg.fc_missing is None  # not installed: its ImportError was kept
    assert fc_log.imported == [] and "fc_heavy" not in sys.modules  # deferred, and the stand-in is gone
    assert type(fc_pkg.__loader__).__name__ == "SourceFileLoader"  # the real loader, given back
    assert fc_pkg.value() == 42 and fc_log.imported == ["fc_heavy"]  # first use imports it, once
    assert fc_pkg.sub.heavy.VALUE == 42 and fc_log.imported == ["fc_heavy"]
    import fc_heavy

    assert type(fc_heavy).__name__ == "module" and fc_heavy.VALUE == 42


def test_no_stand_ins_while_another_thread_runs(tmp_path, monkeypatch):
    """sys.modules is shared: a thread importing the deferred module meanwhile would get the stand-in."""
    import threading

    from featcache import fastimport

    (tmp_path / "fd_heavy.py").write_text("VALUE = 7\n")
    (tmp_path / "fd_pkg.py").write_text("import fd_heavy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fd_heavy", "fd_pkg"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    finder = fastimport._DeferWhileImporting(("fd_pkg",), ("fd_heavy",))
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()
    sys.meta_path.insert(0, finder)
    try:
        import fd_pkg
    finally:
        sys.meta_path.remove(finder)
        done.set()
        other.join()
    assert type(fd_pkg.fd_heavy).__name__ == "module" and sys.modules["fd_heavy"] is fd_pkg.fd_heavy


@pytest.mark.slow  # a fresh interpreter importing scikit-learn and pandas: 3 s
def test_sklearn_imports_without_scipy_stats_and_pandas_and_both_stay_usable():
    script = """
import sys
from featcache.fastimport import defer_sklearn_extras
defer_sklearn_extras()
import sklearn.base, sklearn.utils.fixes as fixes
assert "scipy.stats" not in sys.modules and "pandas" not in sys.modules, sorted(sys.modules)
from sklearn.utils._dataframe import is_pandas_df
import numpy as np
assert not is_pandas_df(np.zeros(3)) and "pandas" not in sys.modules
import pandas
assert fixes.pd.__version__ == pandas.__version__ and fixes.pd.DataFrame is pandas.DataFrame
assert type(sys.modules["pandas"]).__name__ == "module" and is_pandas_df(pandas.DataFrame({"a": [1]}))
import scipy
assert scipy.stats.rankdata([3, 1, 2]).tolist() == [3.0, 1.0, 2.0]
from sklearn.svm import SVR
assert SVR().fit(np.arange(8.0).reshape(-1, 1), np.arange(8.0)).predict([[1.0]]).shape == (1,)
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
