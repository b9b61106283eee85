"""The sha256 of a weights file and of the loaded tensors, remembered between runs until the file changes."""

import hashlib
import json
import os
import time

from featcache.backbones import weights as weights_module


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
