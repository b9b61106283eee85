"""Crafted spreadsheets and featcache.toml files from a downloaded database (docs/security.md): a sheet is measured
by the cells it holds, however its XML is written, and a featcache.toml never makes featcache write outside its own
folder."""

import os
import re
import zipfile

import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from featcache import untrusted
from featcache.defaults import load_config, pick
from featcache.errors import FeatcacheError

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
ROWS = '<row r="1"><c r="A1" t="inlineStr"><is><t>image</t></is></c><c r="B1" t="inlineStr"><is><t>mos</t></is></c>' \
       '</row><row r="2"><c r="A2" t="inlineStr"><is><t>a.jpg</t></is></c><c r="B2"><v>3.5</v></c></row>'
FAR = '<row r="1048576"><c r="XFD1048576"><v>1</v></c></row>'
HUGE = "declares 17179869184 cells, over the limit of 50000000; set FEATCACHE_MAX_SHEET_CELLS to read it"


def _book(path, sheet_data, before="", head='<dimension ref="A1:B2"/>', sheet_name="worksheets/sheet1.xml"):
    """A minimal xlsx written by hand: one sheet holding `sheet_data`, with `head` before it and `before` ahead of
    the root element."""
    sheet = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n{before}<worksheet xmlns="{MAIN}" '
             f'xmlns:r="{REL}">{head}<sheetData>{sheet_data}</sheetData></worksheet>')
    files = {
        "[Content_Types].xml":
            '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
            'content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/'
            'workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            f'<Override PartName="/xl/{sheet_name}" ContentType="application/vnd.openxmlformats-officedocument.'
            'spreadsheetml.worksheet+xml"/></Types>',
        "_rels/.rels":
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{PKG}"><Relationship Id="rId1" Type="http://'
            'schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>'
            '</Relationships>',
        "xl/workbook.xml":
            f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{MAIN}" xmlns:r="{REL}"><sheets><sheet '
            'name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>',
        "xl/_rels/workbook.xml.rels":
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{PKG}"><Relationship Id="rId1" Type="http://'
            'schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" '
            f'Target="{sheet_name}"/></Relationships>',
        f"xl/{sheet_name}": sheet,
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def test_a_genuine_workbook_passes_and_is_read(tmp_path):
    path = _book(tmp_path / "labels.xlsx", ROWS)
    untrusted.check_annotation_file(path)
    table = pd.read_excel(path)
    assert table.to_dict("list") == {"image": ["a.jpg"], "mos": [3.5]}


@pytest.mark.parametrize("bypass", ["single quotes", "no dimension", "70 KB comment first"])
def test_a_far_cell_is_refused_however_the_sheet_is_written(tmp_path, bypass):
    """The three ways past a check of the first 64 KiB for `<dimension ref="...">`, each a few KB on disk."""
    head = {"single quotes": "<dimension ref='A1:XFD1048576'/>", "no dimension": ""}.get(
        bypass, '<dimension ref="A1:XFD1048576"/>')
    before = "<!--" + "x" * 70_000 + "-->" if bypass == "70 KB comment first" else ""
    path = _book(tmp_path / "labels.xlsx", ROWS + FAR, before=before, head=head)
    assert os.path.getsize(path) < 5_000
    with pytest.raises(FeatcacheError, match=re.escape(f"labels.xlsx: sheet sheet1 {HUGE}")):
        untrusted.check_annotation_file(path)


def test_a_lying_dimension_does_not_hide_the_cells(tmp_path):
    path = _book(tmp_path / "labels.xlsx", ROWS + FAR, head='<dimension ref="A1:B2"/>')
    with pytest.raises(FeatcacheError, match=re.escape(HUGE)):
        untrusted.check_annotation_file(path)


def test_rows_and_cells_without_references_are_counted(tmp_path, monkeypatch):
    """`<row>` without `r` follows the previous row, `<c>` without `r` the previous cell: 5 rows x 4 columns."""
    rows = '<row r="2"><c><v>1</v></c></row><row/><row><c r="C4"><v>1</v></c><c/></row><row/>'
    path = _book(tmp_path / "labels.xlsx", rows, head="")
    monkeypatch.setenv("FEATCACHE_MAX_SHEET_CELLS", "20")
    untrusted.check_annotation_file(path)
    monkeypatch.setenv("FEATCACHE_MAX_SHEET_CELLS", "19")
    with pytest.raises(FeatcacheError, match="sheet sheet1 declares 20 cells, over the limit of 19"):
        untrusted.check_annotation_file(path)


def test_a_sheet_stored_under_another_name_is_measured_too(tmp_path):
    path = _book(tmp_path / "labels.xlsx", ROWS + FAR, head="", sheet_name="data/table.xml")
    with pytest.raises(FeatcacheError, match=re.escape(f"sheet table {HUGE}")):
        untrusted.check_annotation_file(path)


@pytest.mark.parametrize("sheet_data, problem", [
    ("<row><c>", "mismatched tag"),
    ("&lol9;", "amplification"),  # a billion laughs: expat stops it before it grows
])
def test_a_sheet_that_is_not_xml_or_expands_entities_is_refused(tmp_path, sheet_data, problem):
    laughs = '<!DOCTYPE worksheet [<!ENTITY lol0 "lollollollollollollollollollol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)) + "]>"
    path = _book(tmp_path / "labels.xlsx", sheet_data, before=laughs if "lol" in sheet_data else "")
    expected = f"labels.xlsx: sheet sheet1 cannot be read as XML \\(.*{problem}.*\\); it is not read"
    with pytest.raises(FeatcacheError, match=expected):
        untrusted.check_annotation_file(path)


# ---------------------------------------------------------------------------------------------- featcache.toml

def test_a_toml_cache_outside_its_folder_writes_nothing_there(pku_root, tmp_path, monkeypatch):
    """The probe's case: a downloaded database whose featcache.toml names a cache two folders up. Passing --cache
    is the way out the message gives, and it works."""
    (pku_root / "featcache.toml").write_text('cache = "../../tomlvictim/deep/evil.h5"\n')
    monkeypatch.chdir(pku_root)
    args = ["extract", "--backbone", "resnet18", "--random-weights", "--image-size", "32", "--workers", "0",
            "--quiet"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "featcache.toml: cache = \"../../tomlvictim/deep/evil.h5\" leaves the folder" in \
        errors[0] and "pass --cache on the command line instead" in errors[0], result.output
    assert not (tmp_path.parent / "tomlvictim").exists() and not (tmp_path / "tomlvictim").exists()
    assert not list(pku_root.glob("*.h5*"))
    result = CliRunner().invoke(cli.main, [*args, "--cache", "mine.h5"])
    assert result.exit_code == 0 and (pku_root / "mine.h5").is_file(), result.output


@pytest.mark.parametrize("cache, problem", [
    ("/tmp/elsewhere.h5", "is an absolute path"),
    ("sub/../../x.h5", "leaves the folder of the file"),
    ("..", "leaves the folder of the file"),
    (".", "names the folder itself"),
    ("out/x.h5", "leads through a symbolic link outside the folder"),
    ("planted.h5", "leads through a symbolic link outside the folder"),
])
def test_a_toml_cache_must_stay_in_its_folder(tmp_path, cache, problem):
    folder, outside = tmp_path / "db", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "out").symlink_to(outside)
    (folder / "planted.h5").symlink_to(outside / "victim.h5")
    (folder / "featcache.toml").write_text(f'cache = "{cache}"\n')
    config = load_config(folder)
    assert pick("given.h5", config, "cache") == "given.h5"  # the command line's --cache wins, no refusal
    with pytest.raises(FeatcacheError) as refused:
        pick(None, config, "cache", "featcache.h5")
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"{folder / 'featcache.toml'}: cache = \"{cache}\" {problem}")
    assert line.endswith("pass --cache on the command line instead")


def test_the_readme_toml_keeps_working(tmp_path):
    """README's example: a cache beside the toml, an absolute root elsewhere (only read), an annotation under it."""
    folder = tmp_path / "project"
    (folder / "sub").mkdir(parents=True)
    (folder / "featcache.toml").write_text(
        f'root = "{tmp_path / "data"}"\nannotation = "labels.xlsx"\ncache = "my-db.h5"\n')
    config = load_config(folder)
    assert pick(None, config, "cache") == str(folder / "my-db.h5")
    assert config["root"] == str(tmp_path / "data") and config["annotation"] == str(tmp_path / "data" / "labels.xlsx")
    (folder / "featcache.toml").write_text('root = "../data"\ncache = "sub/../sub/feat.h5"\n')
    config = load_config(folder)
    assert pick(None, config, "cache") == str(folder / "sub" / "feat.h5")
    assert config["root"] == str(folder / "../data")  # a root outside is only read
