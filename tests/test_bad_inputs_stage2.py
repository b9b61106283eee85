"""Every bad stage-2 input is one 'error:' line and exit code 2, never a traceback (docs/errors.md)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

import cli
from tests.fakedata import make_cache


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad2")
    make_cache(root)
    runner = CliRunner()
    made = runner.invoke(cli.main, ["fit", "--cache", str(root / "c.h5"), "--mode", "nr", "--target", "MOS_q",
                                    "--regressor", "ridge", "--folds", "3", "--quiet", "--no-figures",
                                    "--out", str(root / "run"), "--save-head", str(root / "h.safetensors")])
    assert made.exit_code == 0, made.output
    (root / "w.pth").write_bytes(b"weights")  # stands in for a --weights file
    return root


def _damaged_heads(root):
    """(name, path) of heads edited the ways a hostile user would."""
    arrays = load_file(str(root / "h.safetensors"))
    from safetensors import safe_open

    with safe_open(str(root / "h.safetensors"), framework="numpy") as handle:
        meta = json.loads(handle.metadata()["featcache"])
    out = []
    nan = dict(arrays, **{"est.coef_": np.full_like(arrays["est.coef_"], np.nan)})
    save_file(nan, str(root / "nan.safetensors"), metadata={"featcache": json.dumps(meta)})
    out.append(root / "nan.safetensors")
    short = dict(arrays, **{"est.x_mean_": arrays["est.x_mean_"][:2]})
    save_file(short, str(root / "short.safetensors"), metadata={"featcache": json.dumps(meta)})
    out.append(root / "short.safetensors")
    missing = {k: v for k, v in arrays.items() if k != "est.coef_"}
    save_file(missing, str(root / "missing.safetensors"), metadata={"featcache": json.dumps(meta)})
    out.append(root / "missing.safetensors")
    no_keys = dict(meta)
    del no_keys["scalars"]
    save_file(arrays, str(root / "nokeys.safetensors"), metadata={"featcache": json.dumps(no_keys)})
    out.append(root / "nokeys.safetensors")
    (root / "text.safetensors").write_text("not a head")
    out.append(root / "text.safetensors")
    return out


def _damaged_cache(root, name, edit):
    """A copy of c.h5 whose labels were edited by hand (h5py), as a hostile user would."""
    import shutil

    import h5py

    path = root / name
    shutil.copyfile(root / "c.h5", path)
    with h5py.File(path, "r+") as f:
        edit(f["targets"])
    return str(path)


def _copied_database(root):
    """The database copied to copy/ (cache and annotation), then one label edited in the copy's annotation: the
    labels are compared with the copy's annotation, not with the original's that the cache recorded."""
    import shutil

    copy = root / "copy"
    copy.mkdir(exist_ok=True)
    shutil.copyfile(root / "c.h5", copy / "c.h5")
    lines = (root / "annotation.csv").read_text().splitlines()
    fields = lines[1].split(",")
    fields[3] = "4.9999"
    lines[1] = ",".join(fields)
    (copy / "annotation.csv").write_text("\n".join(lines) + "\n")
    return str(copy / "c.h5")


def _set(dataset, rows, value):
    values = dataset[()]
    values[rows] = value
    dataset[...] = values


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cases(root):
    c = ["--cache", str(root / "c.h5"), "--quiet", "--no-figures"]
    listed = [
        ("empty regressor list", ["fit", *c, "--regressor", ",", "--out", str(root / "o1")]),
        ("unknown regressor", ["fit", *c, "--regressor", "ridg", "--out", str(root / "o2")]),
        ("unknown mode", ["fit", *c, "--mode", "fr2", "--out", str(root / "o3")]),
        ("unknown target", ["fit", *c, "--target", "MOS_x", "--out", str(root / "o4")]),
        ("unknown subset", ["fit", *c, "--subset", "t3i", "--out", str(root / "o5")]),
        ("jobs 0", ["fit", *c, "--jobs", "0", "--out", str(root / "o6")]),
        # on a machine with CUDA this is no bad input: ask for a GPU index that cannot exist instead
        ("device cuda without a GPU" if not _has_cuda() else "a CUDA index past the last GPU",
         ["fit", *c, "--regressor", "mlp", "--device", "cuda" if not _has_cuda() else "cuda:99", "--out",
          str(root / "o7")]),
        ("device foo", ["fit", *c, "--regressor", "mlp", "--device", "foo", "--out", str(root / "o8")]),
        ("folds 1", ["fit", *c, "--folds", "1"]),
        ("too many folds", ["fit", *c, "--folds", "40", "--out", str(root / "o9")]),
        ("cross without train-on", ["fit", *c, "--split", "cross", "--out", str(root / "o10")]),
        ("cross overlapping", ["fit", *c, "--split", "cross", "--train-on", "MJ", "--test-on", "MJ", "--out",
                               str(root / "o11")]),
        ("save-head into a missing folder", ["fit", *c, "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge",
                                             "--save-head", str(root / "nodir" / "h.safetensors"), "--out",
                                             str(root / "o12")]),
        ("--no-floors naming a floor", ["fit", *c, "--regressor", "ridge,prompt-mean", "--no-floors", "--out",
                                        str(root / "o21")]),
        ("save-head of a floor", ["fit", *c, "--mode", "nr", "--target", "MOS_q", "--regressor", "prompt-mean",
                                  "--save-head", str(root / "f.safetensors"), "--out", str(root / "o13")]),
        ("save-head with two modes", ["fit", *c, "--mode", "nr,pr", "--target", "MOS_q", "--regressor", "ridge",
                                      "--save-head", str(root / "g.safetensors"), "--out", str(root / "o14")]),
        ("--out is a file", ["fit", *c, "--regressor", "ridge", "--out", str(root / "c.h5")]),
        ("used --out without --overwrite", ["fit", *c, "--regressor", "ridge", "--out", str(root / "run")]),
        ("missing cache", ["fit", "--cache", str(root / "none.h5")]),
        ("backbone not in the cache", ["fit", *c, "--backbone", "vgg19", "--out", str(root / "o15")]),
        ("bench unknown backbone", ["bench", *c, "--backbone", "vgg19", "--out", str(root / "o16")]),
        ("predict --out into a missing folder", ["predict", "--head", str(root / "h.safetensors"), "x.jpg", "--out",
                                                 str(root / "missing" / "s.csv")]),
        ("predict without images", ["predict", "--head", str(root / "h.safetensors")]),
        ("predict with a missing head", ["predict", "--head", str(root / "nohead.safetensors"), "x.jpg"]),
        ("table of a missing file", ["table", str(root / "c.h5")]),
        ("table with an unknown metric", ["table", str(root / "run"), "--metric", "srcx"]),
        # files named by the user are never written over the cache, what the command reads, or silently
        ("save-head onto the cache", ["fit", *c, "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge",
                                      "--save-head", str(root / "c.h5"), "--overwrite", "--out", str(root / "o17")]),
        ("save-head onto an existing file", ["fit", *c, "--mode", "nr", "--target", "MOS_q", "--regressor",
                                             "ridge", "--save-head", str(root / "h.safetensors"), "--out",
                                             str(root / "o18")]),
        ("predict --out onto the cache", ["predict", "--head", str(root / "h.safetensors"), "x.jpg", "--out",
                                          str(root / "c.h5"), "--overwrite"]),
        ("predict --out onto an existing file", ["predict", "--head", str(root / "h.safetensors"), "x.jpg", "--out",
                                                 str(root / "run" / "results.csv")]),
        ("predict --out onto its head", ["predict", "--head", str(root / "h.safetensors"), "x.jpg", "--out",
                                         str(root / "h.safetensors"), "--overwrite"]),
        ("save-head onto the annotation", ["fit", *c, "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge",
                                           "--save-head", str(root / "annotation.csv"), "--overwrite", "--out",
                                           str(root / "o19")]),
        ("save-head over a file of its own run",
         ["fit", *c, "--mode", "nr", "--target", "MOS_q", "--regressor", "ridge", "--save-head",
          str(root / "o20" / ".." / "o20" / "report.md"), "--out", str(root / "o20")]),
        ("predict --out onto its weights", ["predict", "--head", str(root / "h.safetensors"), "x.jpg", "--weights",
                                            str(root / "w.pth"), "--out", str(root / "w.pth"), "--overwrite"]),
        ("table --out onto an existing file", ["table", str(root / "run"), "--out", str(root / "run" / "report.md")]),
        ("table --out onto the results it reads", ["table", str(root / "run"), "--out",
                                                   str(root / "run" / "results.json"), "--overwrite"]),
    ]
    nan = _damaged_cache(root, "nan.h5", lambda t: _set(t["MOS_q"], 3, np.nan))
    q = ["--quiet", "--no-figures"]
    listed += [
        ("NaN label in the cache", ["fit", "--cache", nan, *q, "--mode", "nr", "--target", "MOS_q", "--regressor",
                                    "svr", "--folds", "4", "--out", str(root / "o21")]),
        ("NaN label in the cache, bench", ["bench", "--cache", nan, *q, "--regressor", "prompt-mean", "--out",
                                           str(root / "o22")]),
        ("constant target", ["fit", "--cache", _damaged_cache(root, "const.h5", lambda t: _set(t["MOS_q"], ..., 3.0)),
                             *q, "--target", "MOS_q", "--out", str(root / "o23")]),
        ("labels edited in a copied database", ["fit", "--cache", _copied_database(root), *q, "--regressor",
                                                "prompt-mean", "--out", str(root / "o25")]),
        ("every target constant", ["fit", "--cache", _damaged_cache(root, "flat.h5", lambda t: [
            _set(t[name], ..., 3.0) for name in ("MOS_q", "MOS_a", "MOS_c")]), *q, "--out", str(root / "o24")]),
    ]
    for head in _damaged_heads(root):
        listed.append((f"damaged head {head.name}", ["predict", "--head", str(head), str(root / "x.jpg"),
                                                     "--out", str(root / "s.csv")]))
    return listed


def test_every_bad_stage2_input_is_one_line_and_exit_2(workdir):
    runner = CliRunner()
    seen = []
    for name, args in cases(workdir):
        result = runner.invoke(cli.main, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, (name, result.output, result.exception)
        assert "Traceback" not in result.output and lines and (lines[-1].startswith("error:") or
                                                                 lines[-1].startswith("Error:")), (name, lines)
        seen.append(name)
    assert len(seen) >= 45


def markdown_table(root) -> str:
    """The README's stage-2 rows: `python -m tests.test_bad_inputs_stage2` prints them from the real messages."""
    runner = CliRunner()
    rows = ["| input | command | exit | message |", "| --- | --- | --- | --- |"]
    for name, args in cases(root):
        result = runner.invoke(cli.main, args)
        message = [line for line in result.output.splitlines() if line.strip()][-1].replace(str(root), "…")
        cache = str(root / "c.h5")  # `--cache c.h5` stands in for the default here
        kept = [a for k, a in enumerate(args) if a not in ("--quiet", "--no-figures")
                and not (a == "--cache" and args[k + 1:k + 2] == [cache])
                and not (a == cache and k and args[k - 1] == "--cache")]
        shown = " ".join(a.replace(str(root), "…") for a in kept)
        rows.append(f"| {name} | `featcache {shown}` | {result.exit_code} | `{message.replace('|', '/')}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_cache(root)
        CliRunner().invoke(cli.main, ["fit", "--cache", str(root / "c.h5"), "--mode", "nr", "--target", "MOS_q",
                                      "--regressor", "ridge", "--folds", "3", "--quiet", "--no-figures", "--out",
                                      str(root / "run"), "--save-head", str(root / "h.safetensors")])
        (root / "w.pth").write_bytes(b"weights")
        print(markdown_table(root))
