"""The hostile corpus of stage 2: heads, weights, results and run folders made by someone else stay data.

Each crafted file is built here (small, no network) with its expected result: a refusal is one `error:` line and
exit 2, never a traceback; otherwise the run ends normally and has neither run code, written outside its folder,
deleted a file it does not write, nor printed a raw control character. See docs/security.md.
"""

import json
import os
import pickle
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import cli
from tests.fakedata import fit_nr_run

FORMULAS = ['=HYPERLINK("http://example.invalid","x")', "+cmd|' /C calc'!A0"]
TARGET = "@SUM(1+1)\x1b[2J"  # a spreadsheet formula and a screen clear in one label name
ESCAPED_TARGET = "'@SUM(1+1)\\x1b[2J"  # as every CSV writes it: the formula behind a quote, the control escaped


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted2")
    made = fit_nr_run(root, "ridge", "--save-head", str(root / "h.safetensors"))
    assert made.exit_code == 0, made.output
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 80, 40)).save(root / "x.jpg")
    return root


def _one_line_refusal(result, *needles):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output and lines and lines[-1].startswith("error:"), lines
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def _head_parts(root):
    arrays = load_file(str(root / "h.safetensors"))
    with safe_open(str(root / "h.safetensors"), framework="numpy") as handle:
        meta = json.loads(handle.metadata()["featcache"])
    return arrays, meta


def _crafted_head(root, name, arrays=None, **changes):
    saved_arrays, meta = _head_parts(root)
    path = root / name
    save_file(saved_arrays if arrays is None else arrays, str(path),
              metadata={"featcache": json.dumps(dict(meta, **changes))})
    return path


class _CreatesFile:
    """A pickle whose loading creates `marker`: what a shipped weights file would do with code instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _head_on_weights_file(root, weights, name, backbone_id=None):
    """A head whose backbone (resnet18 at 64 px) came from the local file `weights`, which it names by path."""
    from featcache.backbones import load_backbone

    backbone = load_backbone("resnet18", "paper", str(weights), False, 64)
    _, meta = _head_parts(root)
    config = dict(meta["backbone_config"], arch="resnet18", id=backbone_id or backbone.id,
                  weights=backbone.weights.to_dict())
    config["weights"]["file"] = weights.name  # relative to the folder predict runs in
    return _crafted_head(root, name, backbone_id=backbone_id or backbone.id, backbone_name="resnet18",
                         backbone_config=config, image_size=64)


# 1. No code from files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".npz", ".pth"])
def test_a_weights_file_beside_a_head_never_runs_code(workdir, monkeypatch, suffix):
    marker = workdir / f"PWNED{suffix}"
    evil = workdir / f"evil{suffix}"
    if suffix == ".pth":
        import torch

        torch.save({"conv1.weight": _CreatesFile(marker)}, evil)
    else:
        evil.write_bytes(pickle.dumps(_CreatesFile(marker)))
    head = _head_on_weights_file(workdir, evil, f"evil{suffix}.safetensors")
    monkeypatch.chdir(workdir)
    runner = CliRunner()
    # the head names evil.npz: without --weights it is not opened (the cache recorded no file of that hash)
    named = runner.invoke(cli.main, ["predict", "--head", head.name, "x.jpg", "--cache", "c.h5", "--out",
                                     f"s{suffix}.csv"])
    _one_line_refusal(named, "was built from a local weights file", "pass that file with --weights FILE")
    assert not marker.exists()
    # given by the user, it is read by the loaders that run no pickled code: refused, nothing created
    given = runner.invoke(cli.main, ["predict", "--head", head.name, "x.jpg", "--weights", evil.name, "--cache",
                                     "c.h5", "--out", f"s{suffix}.csv"])
    _one_line_refusal(given, evil.name)
    assert not marker.exists() and not (workdir / f"s{suffix}.csv").exists()


def test_predict_loads_the_weights_the_cache_recorded_with_the_heads_hash(workdir, tmp_path):
    from featcache.backbones import load_backbone
    from regressors.heads import recorded_weights, weights_to_load

    weights = tmp_path / "w.safetensors"
    save_file({"x": np.zeros(2, np.float32)}, str(weights))
    backbone = load_backbone("resnet18", "paper", str(weights), False, 64)
    meta = {"backbone_id": backbone.id, "backbone_config": {"weights": backbone.weights.to_dict()}}
    cache = tmp_path / "c.h5"
    shutil.copyfile(workdir / "c.h5", cache)
    assert recorded_weights(meta, cache) is None  # the cache holds no such backbone
    with pytest.raises(Exception, match="pass that file with --weights"):
        weights_to_load("h", meta, None, cache)
    with h5py.File(cache, "r+") as f:
        group = f.create_group(f"features/{backbone.id}")
        group.attrs["config_json"] = json.dumps({"id": backbone.id, "weights": backbone.weights.to_dict()})
    from featcache.store import open_read, read_config

    with open_read(cache) as f:
        assert read_config(f, backbone.id)["weights"]["file_sha256"] == backbone.weights.file_sha256
    assert weights_to_load("h", meta, None, cache) == str(weights.resolve())  # recorded, same sha256
    weights.write_bytes(weights.read_bytes() + b" ")  # the file there changed: not the one the head names
    assert recorded_weights(meta, cache) is None
    assert weights_to_load("h", meta, "mine.pth", cache) == "mine.pth"  # --weights: the user's choice


# 2. Temporary files are created exclusively ---------------------------------------------------------------------

def _planted(folder, name, victim):
    (folder / name).symlink_to(os.path.relpath(victim, folder))


def test_a_planted_temporary_file_symlink_is_never_written_through(workdir, tmp_path):
    from regressors.heads import write_scores

    outside, here = tmp_path / "outside", tmp_path / "here"
    outside.mkdir()
    here.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep me\n")
    for name in (".scores.csv.tmp", ".table.tex.tmp", ".h.safetensors.tmp"):
        _planted(here, name, victim)
    write_scores(here / "scores.csv", ["a;touch PWNED_SH;#.jpg"], [""], np.array([0.5]), "MOS_q")
    assert (here / "scores.csv").read_text().splitlines()[1] == "a;touch PWNED_SH;#.jpg,,0.500000"
    table = CliRunner().invoke(cli.main, ["table", str(workdir / "run"), "--format", "latex", "--out",
                                          str(here / "table.tex")])
    assert table.exit_code == 0, table.output
    saved = CliRunner().invoke(cli.main, ["fit", "--cache", str(workdir / "c.h5"), "--mode", "nr", "--target",
                                          "MOS_q", "--regressor", "ridge", "--folds", "3", "--quiet",
                                          "--no-figures", "--out", str(tmp_path / "run"), "--save-head",
                                          str(here / "h.safetensors")])
    assert saved.exit_code == 0, saved.output
    assert victim.read_text() == "keep me\n"
    assert (here / "table.tex").read_text().startswith("\\begin{table}")
    assert not any(p.name.endswith(".tmp") and not p.is_symlink() for p in here.iterdir())  # none left behind


def test_the_atomic_writer_creates_its_file_with_the_umask_and_leaves_nothing_on_failure(tmp_path):
    from featcache.outputs import write_bytes_atomically

    write_bytes_atomically(tmp_path / "a.csv", b"x\n")
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "a.csv").read_bytes() == b"x\n"
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o666 & ~umask
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):
        write_bytes_atomically(tmp_path / "d", b"y")  # a folder is not replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "d"]


# 3. CSV outputs are safe in a spreadsheet -----------------------------------------------------------------------

def test_text_cells_that_start_like_a_formula_are_escaped_and_numbers_are_not():
    from regressors.safe_text import Number, csv_text, spreadsheet_cell

    for text in ["=1+1", "+1", "-x", "@SUM(1)", "\tx"]:
        assert spreadsheet_cell(text) == "'" + text
    assert spreadsheet_cell("\rx") == "\\rx"  # a carriage return is written escaped, so no longer a formula
    assert [spreadsheet_cell(v) for v in ["MJ", -0.5, -3, None, Number("-0.500000")]] == [
        "MJ", -0.5, -3, None, "-0.500000"]
    assert csv_text(["a", "=b"], [[-0.5, "-c"]]) == "a,'=b\r\n-0.5,'-c\r\n"


@pytest.fixture(scope="module")
def formula_run(workdir):
    """A cache whose generators are formulas and whose one target is named TARGET, fitted into run/."""
    root = workdir / "formulas"
    root.mkdir()
    shutil.copyfile(workdir / "c.h5", root / "c.h5")
    with h5py.File(root / "c.h5", "r+") as f:
        generators = f["samples/generator"].asstr()[()]
        renamed = np.array([FORMULAS[0] if g == "MJ" else FORMULAS[1] for g in generators], dtype=object)
        del f["samples/generator"]
        f.create_dataset("samples/generator", data=renamed, dtype=h5py.string_dtype())
        f.move("targets/MOS_q", f"targets/{TARGET}")
        for name in ("MOS_a", "MOS_c"):
            del f[f"targets/{name}"]
        f["targets"].attrs["order"] = json.dumps([TARGET])
    result = CliRunner().invoke(cli.main, ["fit", "--cache", str(root / "c.h5"), "--regressor", "ridge", "--mode",
                                           "nr", "--folds", "3", "--quiet", "--no-figures", "--labels", "cache",
                                           "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root, result


def test_formula_names_land_escaped_in_every_csv_and_are_printed_without_controls(formula_run):
    root, fitted = formula_run
    assert "\x1b" not in fitted.output and "@SUM(1+1)\\x1b[2J" in fitted.output  # fit's printed table
    import csv

    def rows(name):
        with open(root / "run" / name, newline="") as handle:
            return list(csv.DictReader(handle))

    predictions = rows("predictions.csv")
    assert {r["generator"] for r in predictions} == {"'" + f for f in FORMULAS}
    assert {r["target"] for r in predictions} == {ESCAPED_TARGET}
    assert all(float(r["prediction"]) == float(r["prediction"]) for r in predictions)  # numbers stay numbers
    assert {r["target"] for r in rows("results.csv")} == {ESCAPED_TARGET}
    assert {r["target"] for r in rows("folds.csv")} == {ESCAPED_TARGET}
    table = CliRunner().invoke(cli.main, ["table", str(root / "run"), "--format", "csv"])
    assert table.exit_code == 0, table.output
    assert "\x1b" not in table.output and table.output.splitlines()[0].split(",")[3].startswith("'@SUM(1+1)\\x1b")
    for fmt in ("md", "latex"):
        shown = CliRunner().invoke(cli.main, ["table", str(root / "run"), "--format", fmt])
        assert shown.exit_code == 0 and "\x1b" not in shown.output and "x1b[2J" in shown.output, shown.output


def test_predicts_scores_csv_escapes_image_names(tmp_path):
    import csv

    from regressors.heads import write_scores

    write_scores(tmp_path / "s.csv", ["=cmd.jpg", "-1.jpg"], ["@p.jpg", ""], np.array([-0.5, 1.25]), "MOS_q",
                 np.array([-1.0, 2.0]))
    with open(tmp_path / "s.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["image", "prompt_image", "pred_MOS_q", "MOS_q"], ["'=cmd.jpg", "'@p.jpg", "-0.500000", "-1.0"],
                    ["'-1.jpg", "", "1.250000", "2.0"]]


# 4. Bounded reads -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("declared", [3_000_000_000, 10 ** 13, 1e13, -1, "6"])
def test_a_head_declaring_more_features_than_its_arrays_is_refused_before_allocating(workdir, declared):
    head = _crafted_head(workdir, "huge.safetensors", n_features_in=declared, format_version=1)
    result = CliRunner().invoke(cli.main, ["predict", "--head", str(head), str(workdir / "x.jpg"), "--out",
                                           str(workdir / "huge.csv")])
    _one_line_refusal(result, "damaged featcache head", "n_features_in")


@pytest.mark.parametrize("changes, needle", [
    ({"backbone_config": "resnet18"}, "metadata backbone_config missing or not of type dict"),
    ({"feature_dim": 1e13}, "metadata feature_dim missing or not of type int"),
    ({"mode": "os:system"}, "unknown mode 'os:system'"),
    ({"target": ["MOS_q"]}, "metadata target missing or not of type str")])
def test_a_head_with_metadata_of_the_wrong_kind_is_refused(workdir, changes, needle):
    head = _crafted_head(workdir, "kinds.safetensors", **changes)
    result = CliRunner().invoke(cli.main, ["predict", "--head", str(head), str(workdir / "x.jpg"), "--out",
                                           str(workdir / "kinds.csv")])
    _one_line_refusal(result, needle)


def test_a_head_whose_arrays_disagree_with_each_other_is_refused_on_loading(workdir):
    from featcache.errors import FeatcacheError
    from regressors.heads_io import load_head

    arrays, _ = _head_parts(workdir)
    head = _crafted_head(workdir, "coef.safetensors", arrays=dict(arrays, **{"est.coef_": arrays["est.coef_"][:2]}))
    with pytest.raises(FeatcacheError, match="damaged featcache head"):
        load_head(head)


def test_a_head_that_is_a_device_or_a_pipe_is_refused(workdir, tmp_path):
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "pipe.safetensors")
    for name in ("zero.safetensors", "pipe.safetensors"):
        result = CliRunner().invoke(cli.main, ["predict", "--head", str(tmp_path / name), str(workdir / "x.jpg"),
                                               "--out", str(tmp_path / "s.csv")])
        _one_line_refusal(result, "not a regular file")


def test_results_that_are_not_a_bounded_regular_file_are_refused(workdir, tmp_path, monkeypatch):
    zero = tmp_path / "zero"
    zero.mkdir()
    (zero / "results.json").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "pipe.json")
    for given in (zero, zero / "results.json", tmp_path / "pipe.json"):
        _one_line_refusal(CliRunner().invoke(cli.main, ["table", str(given)]), "not a regular file")
    import regressors.results_files

    monkeypatch.setattr(regressors.results_files, "RESULTS_MAX_BYTES", 1 << 10)
    big = CliRunner().invoke(cli.main, ["table", str(workdir / "run")])
    _one_line_refusal(big, "more than a results.json may have (0 MiB)")
    monkeypatch.undo()
    (tmp_path / "rows.json").write_text(json.dumps({"config": {}, "summary": ["x"]}))
    _one_line_refusal(CliRunner().invoke(cli.main, ["table", str(tmp_path / "rows.json")]),
                      "not a featcache results.json")


# 5. --overwrite deletes only files the tool writes --------------------------------------------------------------

def test_a_tampered_manifest_deletes_nothing_but_the_runs_own_outputs(workdir, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("keep\n")
    here = tmp_path / "db"
    here.mkdir()
    shutil.copyfile(workdir / "c.h5", here / "featcache.h5")
    shutil.copyfile(workdir / "annotation.csv", here / "annotation.csv")
    (here / "scatter_old.png").write_bytes(b"an earlier run's figure")
    (here / "notes.png").write_bytes(b"mine")
    (here / ".featcache-run").write_text("annotation.csv\nfeatcache.h5\n../outside/victim.txt\nnotes.png\n"
                                         "scatter_old.png\n")
    monkeypatch.chdir(here)
    result = CliRunner().invoke(cli.main, ["fit", "--out", ".", "--overwrite", "--regressor", "ridge", "--mode",
                                           "nr", "--folds", "3", "--quiet", "--no-figures"])
    assert result.exit_code == 0, result.output
    assert (here / "annotation.csv").is_file() and (here / "featcache.h5").is_file()
    assert (outside / "victim.txt").read_text() == "keep\n" and (here / "notes.png").read_bytes() == b"mine"
    assert not (here / "scatter_old.png").exists()  # a figure name a run writes, listed by the earlier run
    assert (here / "results.json").is_file() and "featcache.h5" not in (here / ".featcache-run").read_text()


def test_a_manifest_that_is_a_device_is_read_as_listing_nothing(workdir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".featcache-run").symlink_to("/dev/zero")
    (out / "table.md").write_text("an earlier run's")
    result = CliRunner().invoke(cli.main, ["fit", "--cache", str(workdir / "c.h5"), "--out", str(out),
                                           "--overwrite", "--regressor", "ridge", "--mode", "nr", "--folds", "3",
                                           "--quiet", "--no-figures"])
    assert result.exit_code == 0, result.output
    manifest = out / ".featcache-run"
    assert not manifest.is_symlink() and "results.json" in manifest.read_text()


# 6. Printed text is sanitised -----------------------------------------------------------------------------------

def test_names_from_a_head_are_printed_with_control_characters_escaped(workdir, monkeypatch):
    evil = workdir / "plain.safetensors"
    save_file({"x": np.zeros(2, np.float32)}, str(evil))
    head = _head_on_weights_file(workdir, evil, "title.safetensors", backbone_id="resnet18\x1b]0;owned\x07/paper/64")
    monkeypatch.chdir(workdir)
    result = CliRunner().invoke(cli.main, ["predict", "--head", head.name, "x.jpg", "--cache", "c.h5", "--out",
                                           "t.csv"])
    line = _one_line_refusal(result, "resnet18\\x1b]0;owned\\x07/paper/64")
    assert "\x1b" not in result.output and "\x07" not in line


# 7. Metadata and results of the wrong types --------------------------------------------------------------------

def _raw_head(root, name, text):
    arrays, _ = _head_parts(root)
    save_file(arrays, str(root / name), metadata={"featcache": text})
    return root / name


@pytest.mark.parametrize("change, needle", [
    ({"params": [1, 2]}, "params is list"),
    ({"scalars": [1]}, "scalars is list"),
    ({"params": {"alpha": {"a": 1}}}, "params.alpha"),
    ({"format_version": "x"}, "format_version"),
    ({"format_version": {}}, "format_version"),
    ("fv_inf", "format_version")])
def test_a_head_whose_params_scalars_or_version_have_the_wrong_type_is_refused(workdir, change, needle):
    _, meta = _head_parts(workdir)
    if change == "fv_inf":
        text = json.dumps(dict(meta, format_version=2)).replace('"format_version": 2', '"format_version": 1e400')
    else:
        text = json.dumps(dict(meta, **change))
    head = _raw_head(workdir, "types.safetensors", text)
    result = CliRunner().invoke(cli.main, ["predict", "--head", str(head), str(workdir / "x.jpg"), "--out",
                                           str(workdir / "types.csv")])
    _one_line_refusal(result, "damaged featcache head", needle)


def _crafted_results(workdir, tmp_path, text=None, **row_changes):
    payload = json.loads((workdir / "run" / "results.json").read_text())
    payload["summary"][0].update(row_changes)
    path = tmp_path / "results.json"
    path.write_text(text if text is not None else json.dumps(payload))
    return path


@pytest.mark.parametrize("fmt", ["md", "csv"])
@pytest.mark.parametrize("text, changes, needle", [
    ("[" * 200000 + "]" * 200000, {}, "RecursionError"),
    (None, {"srcc_mean": "x"}, "srcc_mean 'x'"),
    (None, {"srcc_mean": 10 ** 400}, "srcc_mean"),
    (None, {"plcc_mean": [1]}, "plcc_mean"),
    (None, {"n_failed": "2"}, "n_failed"),
    (None, {"backbone": {"a": 1}}, "backbone")])
def test_results_whose_numbers_have_the_wrong_type_are_refused_in_one_line(workdir, tmp_path, fmt, text, changes,
                                                                           needle):
    path = _crafted_results(workdir, tmp_path, text, **changes)
    result = CliRunner().invoke(cli.main, ["table", str(path), "--format", fmt])
    _one_line_refusal(result, str(path), "not a featcache results.json", needle)


def test_csv_text_cells_have_control_characters_escaped_and_numbers_kept():
    from regressors.safe_text import Number, csv_text, spreadsheet_cell

    assert spreadsheet_cell("a\x1b]0;PWN\x07b\u202e") == "a\\x1b]0;PWN\\x07b\\u202e"
    assert spreadsheet_cell("\x1b[2J=cmd") == "\\x1b[2J=cmd" and spreadsheet_cell("=\x07") == "'=\\x07"
    assert spreadsheet_cell("\ttab") == "'\ttab" and spreadsheet_cell(-0.5) == -0.5
    assert spreadsheet_cell(Number("-0.500000")) == "-0.500000"
    assert "\x1b" not in csv_text(["h\x1b"], [["\x9b1m", Number("1.0")]])


def test_predicts_scores_csv_escapes_a_target_name_from_a_head(tmp_path):
    from regressors.heads import write_scores

    write_scores(tmp_path / "s.csv", ["a.jpg"], [""], np.array([0.5]), "\x1b]0;PWN\x07\x1b[2J=cmd")
    text = (tmp_path / "s.csv").read_text()
    assert text.splitlines()[0] == "image,prompt_image,pred_\\x1b]0;PWN\\x07\\x1b[2J=cmd"
    assert "\x1b" not in text and "\x07" not in text


def test_a_bar_in_a_name_is_escaped_in_a_markdown_table(workdir, tmp_path):
    path = _crafted_results(workdir, tmp_path, backbone="evil|backbone")
    result = CliRunner().invoke(cli.main, ["table", str(path), "--format", "md"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "evil" in line)
    header = next(line for line in result.output.splitlines() if line.startswith("| method"))
    assert "evil\\|backbone" in row
    assert len(row.replace("\\|", "").split("|")) == len(header.split("|"))


@pytest.mark.parametrize("view, needle", [
    ("crops", "the recorded view 'crops' is not a view"),
    ({"crops": 3}, "is not a view (a table with a 'kind')"),
    ({"kind": "weird"}, "unknown view 'weird'"),
    ({"kind": "crops", "crops": 3, "seed": "abc"}, "seed is not a whole number"),
    ({"kind": "native", "max_side": 1.5}, "max_side is not a whole number"),
    ({"kind": "native", "max_side": 0}, "--max-side 0: must be at least 1 pixel")])
def test_a_head_whose_recorded_view_is_malformed_is_refused_naming_it(workdir, view, needle):
    _, meta = _head_parts(workdir)
    head = _crafted_head(workdir, "view.safetensors", backbone_config=dict(meta["backbone_config"], input=view))
    result = CliRunner().invoke(cli.main, ["predict", "--head", str(head), str(workdir / "x.jpg"), "--out",
                                           str(workdir / "view.csv")])
    line = _one_line_refusal(result, needle)
    assert "view.safetensors: the recorded view" in line and not (workdir / "view.csv").exists()
