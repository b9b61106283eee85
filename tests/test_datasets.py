import os
import re
from collections import Counter
from pathlib import Path

import pytest

from featcache.datasets import detect_dataset, load_dataset
from featcache.errors import FeatcacheError, FeatcacheWarning
from tests.fakedata import ANNOTATIONS, HEADER

needs_annotations = pytest.mark.skipif(not ANNOTATIONS.is_dir(), reason="../shared/data/annotations absent")


@needs_annotations
def test_pku_t2i_real_annotation(tmp_path):
    s = load_dataset("pku-aigiqa-4k", tmp_path, ANNOTATIONS / "pku-aigiqa-4k_t2i_annotation.csv")
    assert len(s) == 2400
    assert len(set(s.group)) == 200
    assert Counter(s.generator) == {"SD": 800, "MJ": 800, "DALLE": 800}
    assert {"MOS_q", "MOS_a", "MOS_c"} <= set(s.targets)
    assert set(s.subset) == {"t2i"}
    assert s.image[0] == "All/SD_1000_00.jpg" and s.prompt_image[0] == ""
    assert s.targets["MOS_q"][0] == pytest.approx(2.6233)
    # each (prompt, generator) has 4 siblings
    assert set(Counter(zip(s.group, s.generator)).values()) == {4}


@needs_annotations
def test_agiqa_3k_real_annotation(tmp_path):
    s = load_dataset("agiqa-3k", tmp_path, ANNOTATIONS / "agiqa-3k_data.csv")
    assert len(s) == 2982
    assert len(set(s.group)) == 300
    assert Counter(s.generator)["sd1.5"] == 1200 and Counter(s.generator)["AttnGAN"] == 300
    assert set(s.targets) == {"mos_quality", "mos_align"}


@needs_annotations
def test_agiqa_1k_real_annotation_drops_the_repeated_row(tmp_path):
    with pytest.warns(FeatcacheWarning, match="dreamStudio_8_9_1_1.jpg"):
        s = load_dataset("agiqa-1k", tmp_path, ANNOTATIONS / "agiqa-1k_AIGC_MOS_Zscore.xlsx")
    assert len(s) == 1078
    assert Counter(s.generator) == {"deepai": 720, "dreamStudio": 358}
    assert set(s.targets) == {"MOS"}


@needs_annotations
def test_aigciqa2023_real_annotation(tmp_path):
    s = load_dataset("aigciqa2023", tmp_path, ANNOTATIONS / "aigciqa2023_full.csv")
    assert len(s) == 2400
    assert len(set(s.group)) == 100
    assert set(Counter(s.generator).values()) == {400}
    assert set(s.targets) == {"quality", "authenticity", "correspondence"}
    assert s.image[0] == "Lafite/042-2.png" and s.group[0] == "prompt:042"


@needs_annotations
def test_aigiqa_20k_and_csv_adapter_real_annotation(tmp_path):
    s = load_dataset("aigiqa-20k", tmp_path, ANNOTATIONS / "aigiqa-20k_info_train.csv")
    assert len(s) == 14000 and s.generator[0] == "DALLE2"
    c = load_dataset("csv", tmp_path, ANNOTATIONS / "agiqa-3k_data.csv",
                     {"columns": {"image": "name", "target": ["mos_quality"], "text": "prompt", "image_dir": "img"}})
    assert len(c) == 2982 and c.image[0] == "img/AttnGAN_normal_000.jpg" and c.group[0].startswith("text:")


def test_pku_i2i_rows_and_groups(pku_root):
    s = load_dataset(None, pku_root)  # detected from annotation.csv
    assert s.dataset == "pku-aigiqa-4k"
    assert Counter(s.subset) == {"i2i": 8, "t2i": 12}
    i2i = [i for i, sub in enumerate(s.subset) if sub == "i2i"]
    assert all(s.prompt_image[i].startswith("I2I/Image_prompt/") for i in i2i)
    assert s.group[i2i[0]] == "image:0.jpg"
    paths, gen, ref = s.distinct_images()
    assert len(paths) == 22 and (ref >= 0).sum() == 8 and len(set(ref[ref >= 0])) == 2
    only = load_dataset("pku-i2iqa", pku_root, "annotation.csv")
    assert len(only) == 8


def test_detect_reports_what_it_looked_for(tmp_path):
    with pytest.raises(FeatcacheError, match="no annotation file found"):
        detect_dataset(tmp_path)


def _write(tmp_path, body, header=HEADER):
    path = tmp_path / "annotation.csv"
    path.write_text(header + "\n" + body + "\n")
    return path


@pytest.mark.parametrize("header,body,message", [
    ("Image_prompt,Generated_image,MOS_q", ",SD_1_00.jpg,1", r"missing column\(s\) MOS_a, MOS_c"),
    (HEADER, ',"t",../../SD_1_00.jpg,1,2,3', r"row 2: image path 'All/\.\./\.\./SD_1_00\.jpg' escapes"),
    (HEADER, '../../../x.jpg,"t",SD_1_00.jpg,1,2,3', r"row 2: image prompt path .* escapes the dataset root"),
    (HEADER, ',"t",SD_1_00.jpg,1,2,3\n,"t",SD_1_00.jpg,1,2,3', r"rows 2 and 3: duplicate key 'SD_1_00.jpg'"),
    (HEADER, ',"t",SD_1_00.jpg,1,2,3\n,"t",SD_1_01.jpg,abc,2,3', r"row 3: target MOS_q is 'abc', not a finite number"),
    (HEADER, ',"t",SD_1_00.jpg,1,,3', r"row 2: target MOS_a is empty"),
    (HEADER, ',"t",SD_1_00.jpg,nan,1,3', r"row 2: target MOS_q is 'nan'"),
])
def test_bad_annotations_name_the_file_and_row(tmp_path, header, body, message):
    _write(tmp_path, body, header)
    with pytest.raises(FeatcacheError, match=message):
        load_dataset("pku-aigiqa-4k", tmp_path)


def test_absolute_paths_are_refused(tmp_path):
    _write(tmp_path, '/etc/passwd,"t",SD_1_00.jpg,1,2,3')
    with pytest.raises(FeatcacheError, match="absolute"):
        load_dataset("pku-aigiqa-4k", tmp_path)


def test_unknown_dataset_suggests(tmp_path):
    with pytest.raises(FeatcacheError, match="did you mean 'agiqa-3k'"):
        load_dataset("agiqa3k", tmp_path)


@needs_annotations
def test_detection_reads_the_header_when_the_file_name_is_unknown(tmp_path):
    for name, adapter in [("aigciqa2023_full.csv", "aigciqa2023"), ("pku-aigiqa-4k_t2i_annotation.csv",
                                                                     "pku-aigiqa-4k"), ("agiqa-3k_data.csv", "agiqa-3k")]:
        root = tmp_path / adapter
        root.mkdir()
        (root / name).write_bytes((ANNOTATIONS / name).read_bytes())
        found, path = detect_dataset(root)
        assert (found.name, path.name) == (adapter, name)
    (tmp_path / "pku-aigiqa-4k" / "pku-aigiqa-4k_t2i_annotation.csv").rename(tmp_path / "pku-aigiqa-4k" / "full.csv")
    # full.csv is also AIGCIQA2023's usual name; the header decides
    assert detect_dataset(tmp_path / "pku-aigiqa-4k")[0].name == "pku-aigiqa-4k"


def test_the_registry_reads_the_table_and_checks_declared_columns(tmp_path):
    from featcache.datasets import registry

    seen = []

    @registry.register_dataset("probe-adapter", ("probe.csv",), "a test adapter", columns=("img", "mos"))
    def load_probe(root, table, annotation, options):
        seen.append(list(table.columns))
        raise FeatcacheError("loader reached")

    try:
        (tmp_path / "probe.csv").write_text("img,other\na.jpg,1\n")
        with pytest.raises(FeatcacheError, match=r"probe.csv: missing column\(s\) mos \(has: img, other\)"):
            load_dataset("probe-adapter", tmp_path)
        assert seen == []  # the loader never saw a table without its columns
        (tmp_path / "probe.csv").write_text("img,mos\na.jpg,1\n")
        with pytest.raises(FeatcacheError, match="loader reached"):
            load_dataset("probe-adapter", tmp_path)
        assert seen == [["img", "mos", "row"]]
    finally:
        registry._ADAPTERS.pop("probe-adapter", None)


def test_every_adapter_module_registers_itself():
    import pkgutil

    import featcache.datasets as package
    from featcache.datasets import list_datasets

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"registry", "tables"}
    owners = {a.loader.__module__.rsplit(".", 1)[-1] for a in list_datasets()}
    assert owners == modules


@pytest.mark.parametrize("other", ["./SD_1_00.jpg", "sub/../SD_1_00.jpg", "./sub/../SD_1_00.jpg"])
def test_one_image_under_two_spellings_is_refused(tmp_path, other):
    _write(tmp_path, f',"t",SD_1_00.jpg,1,2,3\n,"t",SD_1_01.jpg,1,2,3\n,"t",{other},2,2,3')
    with pytest.raises(FeatcacheError, match=rf"rows 2 and 4: 'All/SD_1_00.jpg' and 'All/{re.escape(other)}' are "
                                             r"the same image 'All/SD_1_00.jpg'"):
        load_dataset("pku-aigiqa-4k", tmp_path)


def test_backslashes_are_path_separators(tmp_path):
    _write(tmp_path, ',"t",sub/SD_1_00.jpg,1,2,3\n,"t",sub\\SD_1_00.jpg,2,2,3')
    with pytest.raises(FeatcacheError, match=r"rows 2 and 3: .* are the same image 'All/sub/SD_1_00.jpg'"):
        load_dataset("pku-aigiqa-4k", tmp_path)


@pytest.mark.parametrize("columns, message", [('image = "file"\ntarget = ""', "empty column name for target"),
                                              ('image = "file"\ntarget = ["mos", " "]', "empty column name for target"),
                                              ('image = "file"\ntarget = "mos"\ngrup = "g"', "unknown role(s) grup")])
def test_config_columns_are_checked_like_col_options(tmp_path, columns, message):
    from featcache.defaults import load_config

    (tmp_path / "featcache.toml").write_text(f"[columns]\n{columns}\n")
    with pytest.raises(FeatcacheError, match=re.escape(message)):
        load_config(tmp_path)
    (tmp_path / "featcache.toml").write_text('[columns]\nimage = "file"\ntarget = ["mos", "align"]\n')
    assert load_config(tmp_path)["columns"] == {"image": "file", "target": ["mos", "align"]}


def test_checking_config_columns_imports_no_dataset_adapter(tmp_path):
    """Every command reads featcache.toml; checking its [columns] must not import pandas (0.3-0.4 s of start-up)
    through the CSV adapter."""
    import subprocess
    import sys

    (tmp_path / "featcache.toml").write_text('[columns]\nimage = "file"\ntarget = "mos"\n')
    script = ("import sys\nfrom featcache.defaults import load_config\n"
              f"assert load_config({str(tmp_path)!r})['columns'] == {{'image': 'file', 'target': 'mos'}}\n"
              "print([m for m in ('pandas', 'featcache.datasets') if m in sys.modules])\n")
    repo = str(Path(__file__).resolve().parents[1])
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": repo})
    assert run.stdout.strip() == "[]", run.stdout + run.stderr


def _lines(*lines, newline="\n"):
    return newline.join(lines) + newline


GOOD = ',"t",SD_1_0{}.jpg,1,2,3'


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_row_numbers_are_the_lines_a_person_sees_after_blank_lines(tmp_path, newline):
    """pandas skips blank lines, so every later row was numbered too low (row 9 for line 11)."""
    lines = [HEADER, GOOD.format(0), GOOD.format(1), "", " \t", ',"two', 'lines",SD_1_02.jpg,1,2,3',
             *(GOOD.format(k) for k in (3, 4, 5)), ',"t",SD_1_06.jpg,bad,2,3']
    (tmp_path / "annotation.csv").write_bytes(_lines(*lines, newline=newline).encode())
    with pytest.raises(FeatcacheError, match=r"annotation.csv row 11: target MOS_q is 'bad'"):
        load_dataset(None, tmp_path)
    (tmp_path / "annotation.csv").write_bytes(_lines(*lines[:-1], "", "", newline=newline).encode())
    s = load_dataset(None, tmp_path)
    assert s.rows == [2, 3, 6, 8, 9, 10] and s.text_prompt[2].splitlines() == ["two", "lines"]


def test_rows_of_a_duplicate_after_blank_lines_and_leading_blank_lines(tmp_path):
    (tmp_path / "annotation.csv").write_text(_lines("", "", HEADER, GOOD.format(0), "", GOOD.format(0)))
    with pytest.raises(FeatcacheError, match=r"annotation.csv rows 4 and 6: duplicate key 'SD_1_00.jpg'"):
        load_dataset(None, tmp_path)


@pytest.mark.parametrize("lines, row", [
    ([HEADER, GOOD.format(0), ',"t",SD_1_01.jpg\0x,1,2,3'], 3),  # a name that would read as SD_1_01.jpg if cut there
    ([HEADER, "", ',"two', 'lines",SD_1_01.jpg,1,2\0,3'], 4),  # the line a person sees, inside a quoted record
    ([HEADER + "\0", GOOD.format(0)], 1),
])
def test_a_nul_byte_is_refused_with_its_line(tmp_path, lines, row):
    (tmp_path / "annotation.csv").write_bytes(_lines(*lines).encode())
    with pytest.raises(FeatcacheError, match=rf"annotation.csv row {row}: holds a NUL byte \(\\x00\)"):
        load_dataset("pku-aigiqa-4k", tmp_path)


def test_other_control_characters_in_a_name_are_refused_by_the_cell_check(tmp_path):
    (tmp_path / "annotation.csv").write_text(_lines(HEADER, GOOD.format(0), ',"t",SD_1_01.jpg\x01x,1,2,3'))
    with pytest.raises(FeatcacheError, match=r"annotation.csv row 3: image path 'All/SD_1_01.jpg\\x01x' holds a "
                                             r"control character"):
        load_dataset("pku-aigiqa-4k", tmp_path)


def test_rows_of_a_headerless_file_start_at_line_1(tmp_path):
    (tmp_path / "info_train.csv").write_text(_lines("A_1.png,a cat,3", "", "A_2.png,a dog,x"))
    with pytest.raises(FeatcacheError, match=r"info_train.csv row 3: target mos is 'x'"):
        load_dataset(None, tmp_path)


def test_rows_of_a_spreadsheet_are_its_row_numbers(tmp_path):
    """read_excel keeps blank rows as rows of empty cells: they were data rows ('target MOS_q is empty')."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append([])  # row 1 blank: the header is the first row with a cell
    sheet.append(HEADER.split(","))
    sheet.append(["", "t", "SD_1_00.jpg", 1, 2, 3])
    sheet.append([])
    sheet.append(["", " ", None])  # only blank cells
    sheet.append(["", "t", "SD_1_01.jpg", 1.5, 2, 3])
    sheet.append(["", "t", "SD_1_02.jpg", "bad", 2, 3])
    book.save(tmp_path / "annotation.xlsx")
    with pytest.raises(FeatcacheError, match=r"annotation.xlsx row 7: target MOS_q is 'bad'"):
        load_dataset(None, tmp_path)
    sheet.delete_rows(7)
    sheet.append([])
    book.save(tmp_path / "annotation.xlsx")
    s = load_dataset(None, tmp_path)
    assert s.rows == [3, 6] and list(s.targets["MOS_q"]) == [1.0, 1.5] and s.key == ["SD_1_00.jpg", "SD_1_01.jpg"]


AGIQA_3K = "name,prompt,mos_quality,mos_align\nAttnGAN_normal_000.jpg,a cat,1.5,2.5\n"


def _pku_csv(folder, name="annotation.csv", q="1"):
    (folder / name).write_text(f'{HEADER}\n,"t",SD_1_00.jpg,{q},2,3\n')


@pytest.mark.parametrize("files, listing", [
    ({"annotation.csv": "csv", "annotation.xlsx": "xlsx"}, "annotation.csv: pku-aigiqa-4k, annotation.xlsx: "
                                                           "pku-aigiqa-4k"),
    ({"mylabels.csv": "csv", "other.csv": "csv"}, "mylabels.csv: pku-aigiqa-4k, other.csv: pku-aigiqa-4k"),
    ({"annotation.csv": "csv", "data.csv": "3k"}, "annotation.csv: pku-aigiqa-4k, data.csv: agiqa-3k"),
])
def test_several_annotation_files_are_refused_not_picked(tmp_path, files, listing):
    """Picking one silently meant edits to the other changed nothing."""
    for name, kind in files.items():
        if kind == "csv":
            _pku_csv(tmp_path, name)
        elif kind == "xlsx":
            import pandas as pd

            pd.DataFrame({c: [""] for c in HEADER.split(",")}).assign(Generated_image="SD_1_00.jpg", MOS_q="5",
                                                                       MOS_a="2", MOS_c="3").to_excel(
                tmp_path / name, index=False)
        else:
            (tmp_path / name).write_text(AGIQA_3K)
    message = (rf"^{re.escape(str(tmp_path))}: several annotation files match \({re.escape(listing)}\); "
               r"pass --annotation FILE \(and --dataset NAME\)$")
    with pytest.raises(FeatcacheError, match=message):
        load_dataset(None, tmp_path)
    first = sorted(files)[0]
    assert load_dataset(None, tmp_path, first).source == str(tmp_path / first)


def test_dataset_without_annotation_refuses_only_its_own_alternatives(tmp_path):
    _pku_csv(tmp_path)
    (tmp_path / "data.csv").write_text(AGIQA_3K)
    assert load_dataset("pku-aigiqa-4k", tmp_path).dataset == "pku-aigiqa-4k"
    assert load_dataset("agiqa-3k", tmp_path).dataset == "agiqa-3k"
    _pku_csv(tmp_path, "annotation_i2i.csv")
    _pku_csv(tmp_path, "annotation.xlsx")  # not a spreadsheet, but named as one: still an alternative
    with pytest.raises(FeatcacheError, match=r"several annotation files match \(annotation.csv: pku-aigiqa-4k, "
                                             r"annotation.xlsx: pku-aigiqa-4k\); pass --annotation FILE$"):
        load_dataset("pku-aigiqa-4k", tmp_path)


def test_a_databases_other_tables_are_no_candidates(tmp_path):
    """Splits, prompt lists, a readme, an unrelated info.csv or a result file beside the named annotation."""
    _pku_csv(tmp_path)
    for name in ("train.csv", "test.csv"):
        _pku_csv(tmp_path, name)
    (tmp_path / "prompts.csv").write_text("prompt\na cat\n")
    (tmp_path / "README.txt").write_text("PKU-AIGIQA-4K\n")
    (tmp_path / "info.csv").write_text("id,width,height,model,seed\n1,512,512,SD,7\n")  # not AIGIQA-20K's 3 columns
    (tmp_path / "scores.csv").write_text("image,prompt_image,pred_MOS_q\nAll/SD_1_00.jpg,,3.1\n")
    adapter, path = detect_dataset(tmp_path)
    assert (adapter.name, path.name) == ("pku-aigiqa-4k", "annotation.csv")
    (tmp_path / "annotation.csv").unlink()  # no named file: the two splits are candidates, neither is chosen
    with pytest.raises(FeatcacheError, match=r"\(test.csv: pku-aigiqa-4k, train.csv: pku-aigiqa-4k\)"):
        detect_dataset(tmp_path)


def test_aigiqa_20k_train_and_test_files_are_no_alternatives(tmp_path):
    (tmp_path / "info_train.csv").write_text("DALLE2_0001.png,a cat,3.2\n")
    (tmp_path / "info_test.csv").write_text("DALLE2_0002.png,a dog\n")
    assert detect_dataset(tmp_path)[1].name == "info_train.csv"


def test_annotation_option_alone_says_the_database(tmp_path):
    _pku_csv(tmp_path)
    (tmp_path / "data.csv").write_text(AGIQA_3K)
    assert load_dataset(None, tmp_path, "data.csv").dataset == "agiqa-3k"
    assert load_dataset(None, tmp_path, "annotation.csv").dataset == "pku-aigiqa-4k"
    with pytest.raises(FeatcacheError, match="nope.csv: annotation file not found"):
        load_dataset(None, tmp_path, "nope.csv")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "labels.csv").write_text("a.png,a cat,3\nb.png,a dog,4\n")  # headerless, under a name of its own
    with pytest.raises(FeatcacheError, match=r"labels.csv: its name and header fit no known database; pass "
                                             r"--dataset NAME \(a headerless file: --dataset aigiqa-20k"):
        load_dataset(None, alone, "labels.csv")
    assert load_dataset("aigiqa-20k", alone, "labels.csv").dataset == "aigiqa-20k"


def test_featcache_toml_naming_the_annotation_settles_it(tmp_path, monkeypatch):
    import cli
    from featcache.defaults import load_config

    _pku_csv(tmp_path)
    _pku_csv(tmp_path, "labels.csv", q="4")
    (tmp_path / "annotation.xlsx").write_bytes((tmp_path / "annotation.csv").read_bytes())
    (tmp_path / "featcache.toml").write_text('annotation = "labels.csv"\n')
    monkeypatch.chdir(tmp_path)
    samples, _ = cli.load_samples_from_options(load_config(tmp_path), None, None, None, ())
    assert samples.source == str(tmp_path / "labels.csv") and samples.targets["MOS_q"][0] == 4


def test_synth_writes_one_annotation_candidate(tmp_path):
    import numpy as np

    from featcache.datasets.registry import annotation_candidates
    from featcache.synth import synth
    from tests.fakedata import noisy_image

    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        noisy_image(rng, (48, 64)).save(tmp_path / "photos" / f"p{i}.png")
    synth(tmp_path / "photos", tmp_path / "out", views=1, size=16)
    assert [(p.name, a.name) for p, a in annotation_candidates(tmp_path / "out")] == [("annotation.csv",
                                                                                      "pku-aigiqa-4k")]


def test_a_spreadsheet_with_blank_rows_above_its_header_is_still_the_named_file(tmp_path):
    """Detection read its header as pandas' first row (blank), so a split beside it became the annotation."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append([])
    sheet.append([])
    sheet.append(HEADER.split(","))
    sheet.append(["", "t", "SD_1_00.jpg", 1, 2, 3])
    sheet.append(["", "t", "SD_1_01.jpg", 1.5, 2, 3])
    book.save(tmp_path / "annotation.xlsx")
    (tmp_path / "train.csv").write_text(_lines(HEADER, GOOD.format(0)))
    s = load_dataset(None, tmp_path)
    assert Path(s.source).name == "annotation.xlsx" and len(s.key) == 2 and s.rows == [4, 5]
