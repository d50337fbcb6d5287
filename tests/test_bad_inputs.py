"""Generated bad inputs of many kinds through the real importers and import assets: every line gets
an outcome (a row or a quarantine row with a reason), no input fails an import or a run, and the
text rules (encodings, line ends, control and zero-width characters) hold on hand-checked cases."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest
from dagster import AssetSelection, materialize
from PIL import Image

from firm_assets.curation.lines import (
    BadLine,
    Quarantined,
    attempt,
    check_characters,
    clean_text,
    decode_line,
    json_records,
    quarantined,
    read_lines,
    required_text,
)
from firm_assets.definitions import ASSETS, CHECKS, build_resources
from firm_assets.edit.importer import read_edit_requests
from firm_assets.gen.importers import read_prompt_files, read_prompts
from resources.home import warehouse_path
from warehouse.connection import Warehouse


def _json(**record: object) -> bytes:
    return json.dumps(record).encode()


# Lines that are bad for both JSONL importers: (id, line bytes, reason fragment). Every one of
# them has an `image`, so only its flaw makes it bad for the edit importer too.
BAD_JSONL_LINES = [
    ("lone-surrogate-escape", b'{"prompt": "a \\ud800 b", "image": "a.png"}', "lone surrogate U+D800"),
    ("low-surrogate-escape", b'{"prompt": "x\\udc80", "image": "a.png"}', "lone surrogate U+DC80"),
    ("nul-escape", b'{"prompt": "a\\u0000b", "image": "a.png"}', "NUL character"),
    ("bell-escape", b'{"prompt": "ring \\u0007", "image": "a.png"}', "control character U+0007"),
    ("c1-escape", b'{"prompt": "a\\u0085b", "image": "a.png"}', "control character U+0085"),
    ("cr-escape", b'{"prompt": "a\\rb", "image": "a.png"}', "carriage return"),
    ("raw-nul", _json(prompt="a", image="a.png") + b"\x00", "NUL character"),
    ("raw-lone-cr", b'{"prompt": "a",\r "image": "a.png"}', "carriage return"),
    ("raw-vertical-tab", b'{"prompt": "a",\x0b "image": "a.png"}', "control character U+000B"),
    ("raw-escape-char", b'{"prompt": "\x1b[31mred", "image": "a.png"}', "control character U+001B"),
    ("zero-width-only", _json(prompt="\u200b\u200c\u200d\u2060", image="a.png"), "empty"),
    ("bom-and-spaces", _json(prompt=" \ufeff \t", image="a.png"), "empty"),
    ("deeply-nested-array", b"[" * 100_000, "nested too deeply"),
    ("deeply-nested-object", b'{"a": ' * 50_000, "nested too deeply"),
    ("latin-1", b'{"prompt": "caf\xe9", "image": "a.png"}', "not valid UTF-8"),
    ("overlong-utf8", b'{"prompt": "\xc0\xaf", "image": "a.png"}', "not valid UTF-8"),
    ("utf8-encoded-surrogate", b'{"prompt": "\xed\xa0\x80", "image": "a.png"}', "not valid UTF-8"),
    ("binary", bytes(b for b in range(256) if b != 0x0A), "not valid UTF-8"),
    ("int-too-long", b'{"prompt": ' + b"9" * 5000 + b', "image": "a.png"}', "malformed JSON"),
    ("nan-prompt", b'{"prompt": NaN, "image": "a.png"}', "must be a string"),
    ("truncated", b'{"prompt": "a", "ima', "malformed JSON"),
    ("json-string", b'"just a string"', "not a JSON object"),
    ("json-null", b"null", "not a JSON object"),
    ("prompt-object", _json(prompt={"text": "a"}, image="a.png"), "must be a string"),
    ("too-long", _json(prompt="x" * 2001, image="a.png"), "too long"),
]
# Lines only the edit importer rejects: their flaw is in an image path.
BAD_EDIT_ONLY_LINES = [
    ("path-surrogate", b'{"prompt": "p", "image": "\\udc80.png"}', "lone surrogate U+DC80"),
    ("path-nul", b'{"prompt": "p", "image": "a\\u0000.png"}', "NUL character"),
    ("edited-path-control", b'{"prompt": "p", "image": "a.png", "edited_images": ["\\u001f"]}', "U+001F"),
    ("no-image", _json(prompt="p"), "missing image"),
]
# Lines of a plain-text prompt file.
BAD_TEXT_LINES = [
    ("nul", b"a cat\x00", "NUL character"),
    ("utf16-without-bom", "a cat".encode("utf-16-le"), "NUL character"),
    ("lone-cr", b"a cat\ra dog", "carriage return"),
    ("form-feed", b"a cat\x0c", "control character U+000C"),
    ("file-separator", b"a\x1ccat", "control character U+001C"),
    ("del", b"a cat\x7f", "control character U+007F"),
    ("zero-width-only", "\u200b \u2060".encode(), "empty prompt"),
    ("latin-1", b"caf\xe9 au lait", "not valid UTF-8"),
    ("too-long", b"x" * 2001, "too long"),
]


def _sandwich(tmp_path: Path, name: str, first: bytes, bad: bytes, last: bytes) -> Path:
    """A file with the bad line between two good ones, so line numbers are known: 1, 2, 3."""
    path = tmp_path / name
    path.write_bytes(first + b"\n" + bad + b"\n" + last + b"\n")
    return path


@pytest.mark.parametrize(
    ("line", "reason"),
    [case[1:] for case in BAD_JSONL_LINES + BAD_EDIT_ONLY_LINES],
    ids=[case[0] for case in BAD_JSONL_LINES + BAD_EDIT_ONLY_LINES],
)
def test_edit_importer_quarantines_each_bad_line_alone(tmp_path: Path, line: bytes, reason: str) -> None:
    good = (_json(prompt="Make it red", image="1.png"), _json(prompt="Make it blue", image="2.png"))
    path = _sandwich(tmp_path, "requests.jsonl", good[0], line, good[1])
    requests, bad = read_edit_requests(path)
    assert [(r.instruction, r.line) for r in requests] == [("Make it red", 1), ("Make it blue", 3)]
    assert [(q.source, q.locator) for q in bad] == [(str(path), "line 2")]
    assert reason in bad[0].reason, bad[0].reason
    assert bad[0].raw.encode("utf-8")  # storable as it is: no lone surrogate left


@pytest.mark.parametrize(
    ("line", "reason"), [case[1:] for case in BAD_JSONL_LINES], ids=[case[0] for case in BAD_JSONL_LINES]
)
def test_geneval_importer_quarantines_each_bad_line_alone(tmp_path: Path, line: bytes, reason: str) -> None:
    path = _sandwich(tmp_path, "meta.jsonl", _json(prompt="a red cat"), line, _json(prompt="a blue dog"))
    imported = read_prompts(path)
    assert [(p.prompt, p.locator) for p in imported.prompts] == [
        ("a red cat", "line 1"),
        ("a blue dog", "line 3"),
    ]
    assert [q.locator for q in imported.bad] == ["line 2"] and imported.duplicates == []
    assert reason in imported.bad[0].reason, imported.bad[0].reason


@pytest.mark.parametrize(
    ("line", "reason"), [case[1:] for case in BAD_TEXT_LINES], ids=[case[0] for case in BAD_TEXT_LINES]
)
def test_text_importer_quarantines_each_bad_line_alone(tmp_path: Path, line: bytes, reason: str) -> None:
    path = _sandwich(tmp_path, "prompts.txt", b"a red cat", line, b"a blue dog")
    imported = read_prompts(path)
    assert [(p.prompt, p.locator) for p in imported.prompts] == [
        ("a red cat", "line 1"),
        ("a blue dog", "line 3"),
    ]
    assert [q.locator for q in imported.bad] == ["line 2"]
    assert reason in imported.bad[0].reason, imported.bad[0].reason


def test_json_list_records_are_quarantined_alone(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(
        '["a red cat", "a \\ud800 cat", {"prompt": "nul\\u0000"}, "\\u200b", [[[]]], {"caption": "a dog"}]'
    )
    imported = read_prompts(path)
    assert [(p.prompt, p.locator) for p in imported.prompts] == [
        ("a red cat", "record 1"),
        ("a dog", "record 6"),
    ]
    reasons = {q.locator: q.reason for q in imported.bad}
    assert list(reasons) == ["record 2", "record 3", "record 4", "record 5"]
    assert "lone surrogate U+D800" in reasons["record 2"]
    assert "NUL character" in reasons["record 3"]
    assert reasons["record 4"].startswith("empty prompt")
    assert reasons["record 5"] == "entry is a list, not an object or a string"
    assert imported.bad[0].raw == '"a \\ud800 cat"'  # the surrogate escaped, so DuckDB takes it


def _whole_file_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files that cannot be read at all, each with the reason fragment its one row must carry."""
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    bad_utf16 = tmp_path / "bad16.jsonl"
    bad_utf16.write_bytes(codecs.BOM_UTF16_LE + _json(prompt="a").decode().encode("utf-16-le") + b"x")
    bad_utf32 = tmp_path / "bad32.jsonl"
    bad_utf32.write_bytes(codecs.BOM_UTF32_BE + b"\x00\x11\x00\x00")  # U+110000 does not exist
    bad_utf16_surrogate = tmp_path / "surrogate16.txt"
    bad_utf16_surrogate.write_bytes(codecs.BOM_UTF16_LE + b"\x00\xd8a\x00")
    return {
        "missing": (tmp_path / "absent.jsonl", "file not found"),
        "directory": (folder, "a directory, not a file"),
        "symlink-loop": (loop, "Too many levels of symbolic links"),
        "name-too-long": (tmp_path / ("n" * 300 + ".jsonl"), "File name too long"),
        "nul-in-path": (tmp_path / "a\x00b.jsonl", "invalid file path"),
        "bad-utf16": (bad_utf16, "not valid UTF-16"),
        "bad-utf32": (bad_utf32, "not valid UTF-32"),
        "utf16-lone-surrogate": (bad_utf16_surrogate, "not valid UTF-16"),
    }


WHOLE_FILE_CASES = [
    "missing",
    "directory",
    "symlink-loop",
    "name-too-long",
    "nul-in-path",
    "bad-utf16",
    "bad-utf32",
    "utf16-lone-surrogate",
]


@pytest.mark.parametrize("case", WHOLE_FILE_CASES)
def test_unreadable_files_are_one_quarantine_row(tmp_path: Path, case: str) -> None:
    path, reason = _whole_file_cases(tmp_path)[case]
    for rows, bad in (read_edit_requests(path), _prompts_and_bad(path)):
        assert rows == []
        assert [(q.source, q.locator, q.raw) for q in bad] == [(str(path), "file", "")]
        assert reason in bad[0].reason, bad[0].reason


def _prompts_and_bad(path: Path) -> tuple[list, list[Quarantined]]:
    imported = read_prompts(path)
    return imported.prompts, imported.bad


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'[{"prompt": "a"}', "malformed JSON file"),
        (b'["a", "caf\xe9"]', "not valid UTF-8 (byte 11 of the file)"),
        (b'{"prompt": "a"}', "must hold a list"),
    ],
    ids=["deep", "truncated", "latin-1", "object"],
)
def test_a_json_list_that_does_not_parse_is_one_row(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "prompts.json"
    path.write_bytes(content)
    imported = read_prompts(path)
    assert imported.prompts == [] and [q.locator for q in imported.bad] == ["file"]
    assert reason in imported.bad[0].reason, imported.bad[0].reason


# --- the text rules, hand-checked -----------------------------------------------------------------


def test_lines_split_on_newline_only_and_crlf_is_a_line_end(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"a\r\nb\rc\n\x0bd\x1ce\xe2\x80\xa8f\x85\ng\r")
    assert read_lines(path) == [(1, b"a"), (2, b"b\rc"), (3, b"\x0bd\x1ce\xe2\x80\xa8f\x85"), (4, b"g")]


def test_json_records_yields_objects_and_quarantines_the_rest_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"a": 1}\n\n[1]\n{"b": \n  \n{"c": "d"}\n')
    bad: list[Quarantined] = []
    assert list(json_records(path, bad)) == [(1, b'{"a": 1}', {"a": 1}), (6, b'{"c": "d"}', {"c": "d"})]
    assert [(q.locator, q.raw) for q in bad] == [("line 3", "[1]"), ("line 4", '{"b": ')]
    assert bad[0].reason == "not a JSON object (got list)" and bad[1].reason.startswith("malformed JSON")
    unreadable: list[Quarantined] = []
    assert list(json_records(tmp_path / "missing.jsonl", unreadable)) == []
    assert [(q.locator, q.reason) for q in unreadable] == [("file", "file not found")]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_byte_order_marks_select_the_encoding(tmp_path: Path, encoding: str) -> None:
    text = "a café\r\n\u2028 naïve\n"
    bom = {
        "utf-8-sig": b"",  # the codec writes the BOM itself
        "utf-16-le": codecs.BOM_UTF16_LE,
        "utf-16-be": codecs.BOM_UTF16_BE,
        "utf-32-le": codecs.BOM_UTF32_LE,
        "utf-32-be": codecs.BOM_UTF32_BE,
    }[encoding]
    path = tmp_path / "prompts.txt"
    path.write_bytes(bom + text.encode(encoding))
    assert read_lines(path) == [(1, "a café".encode()), (2, "\u2028 naïve".encode()), (3, b"")]
    assert [p.prompt for p in read_prompts(path).prompts] == ["a café", "\u2028 naïve".strip()]


def test_a_bom_at_the_start_of_a_line_is_dropped() -> None:
    assert decode_line(b"\xef\xbb\xbfa cat") == "a cat"
    assert decode_line(b"a\tcat") == "a\tcat"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ok\ttab\nnewline", None),
        ("\u2028 \u00a0 ünïcödé 文字 🙂", None),
        ("a\x00b", "x contains a NUL character (character 2)"),
        ("ab\rc", "x contains a carriage return not followed by a newline (character 3)"),
        ("\x01", "x contains control character U+0001 (character 1)"),
        ("a\x9f", "x contains control character U+009F (character 2)"),
        ("\udfff", "x contains a lone surrogate U+DFFF, not valid Unicode"),
    ],
)
def test_check_characters(text: str, reason: str | None) -> None:
    outcome = attempt(check_characters, text, "x")
    assert (outcome.reason if isinstance(outcome, BadLine) else None) == reason


def test_clean_and_required_text() -> None:
    assert clean_text(" \u200b\ufeff a cat \u2060\n", "p") == "a cat"
    assert clean_text("a\u200bcat", "p") == "a\u200bcat"  # only the edges are trimmed
    assert clean_text("\u200b \u200c", "p") == ""
    assert required_text("  two dogs ", "p") == "two dogs"
    with pytest.raises(BadLine, match=r"^empty p \(nothing left once whitespace"):
        required_text("\u200d\ufeff", "p")
    with pytest.raises(BadLine, match="p must be a string, got int"):
        clean_text(3, "p")


def test_attempt_turns_any_error_into_the_units_reason() -> None:
    assert attempt(int, "7") == 7
    assert attempt(lambda: [][0]).reason == "could not be read: IndexError: list index out of range"

    def recurse() -> None:
        recurse()

    assert attempt(recurse).reason == "nested too deeply to read"
    assert attempt(required_text, "", "p").reason.startswith("empty p")


def test_quarantine_rows_are_storable() -> None:
    row = quarantined(Path("/data/\udcff.jsonl"), "line 1", "a\ud800", "why")
    assert row == Quarantined("/data/\\udcff.jsonl", "line 1", "a\\ud800", "why")


# --- duplicates and GenEval metadata ----------------------------------------------------------------


def test_duplicates_point_at_their_first_occurrence_across_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.jsonl"
    first.write_text("A red cat.\n\na blue dog\nA RED  cat\n")
    second.write_text(
        json.dumps({"prompt": "a blue dog!"}) + "\n" + json.dumps({"prompt": "a green bird"}) + "\n"
    )
    imported = read_prompt_files([first, second])
    assert [(p.prompt, p.locator) for p in imported.prompts] == [
        ("A red cat.", "line 1"),
        ("a blue dog", "line 3"),
        ("a green bird", "line 2"),
    ]
    assert [(q.source, q.locator, q.raw, q.reason) for q in imported.duplicates] == [
        (str(first), "line 4", "A RED  cat", "duplicate of line 1"),
        (str(second), "line 1", '{"prompt": "a blue dog!"}', f"duplicate of {first} line 3"),
    ]
    assert imported.bad == []


def _geneval_line(include: object, exclude: object = None, prompt: str = "a photo") -> bytes:
    record: dict[str, object] = {"tag": "t", "include": include, "prompt": prompt}
    if exclude is not None:
        record["exclude"] = exclude
    return json.dumps(record).encode()


@pytest.mark.parametrize(
    ("include", "exclude", "reason"),
    [
        ([{"class": "cat", "count": 0}], None, "include item 1 ('cat') has a bad count 0: a whole number"),
        ([{"class": "cat", "count": 17}], None, "bad count 17"),
        ([{"class": "cat", "count": "2"}], None, "bad count '2'"),
        ([{"class": "cat", "count": 2.0}], None, "bad count 2.0"),
        ([{"class": "cat", "count": True}], None, "bad count True"),
        ([{"class": "cat"}], [{"class": "dog", "count": -1}], "exclude item 1 ('dog') has a bad count -1"),
        ([{"class": "  "}], None, "empty include item 1 class"),
        ([{"class": "cat", "color": ""}], None, "empty include item 1 color"),
        ([{"class": "cat", "color": 3}], None, "include item 1 color must be a string"),
        ([{"class": "cat"}, {"class": "dog", "position": ["behind", 0]}], None, "unknown relation 'behind'"),
        ([{"class": "cat"}, {"class": "dog", "position": [["above"], 0]}], None, "unknown relation"),
        ([{"class": "cat"}, {"class": "dog", "position": ["above", 1]}], None, "item 2 position points at 1"),
        ([{"class": "cat"}, {"class": "dog", "position": ["above", 2]}], None, "points at 2"),
        ([{"class": "cat"}, {"class": "dog", "position": ["above", -1]}], None, "points at -1"),
        ([{"class": "cat"}, {"class": "dog", "position": ["above", False]}], None, "points at False"),
        ([{"class": "cat"}, {"class": "dog", "position": ["above"]}], None, "must be [relation, index"),
        ([{"class": "cat"}], [{"class": "dog", "position": ["above", 0]}], "only included objects"),
        (
            [{"class": "cat", "count": 2}],
            [{"class": "cat", "count": 2}],
            "asks for 2 'cat' but exclude forbids 2",
        ),
        ([{"class": "cat"}], [{"class": "cat"}], "asks for 1 'cat' but exclude forbids 1"),
        ([{"class": "cat"}, {"class": "cat", "count": 2}], None, "include lists 'cat' twice"),
        ([], [{"class": "cat"}], "empty include list"),
        ("cat", None, "include must be a list"),
        ([{"class": "cat"}], {"class": "dog"}, "exclude must be a list"),
        (["cat"], None, "include item 1 without a class"),
    ],
)
def test_geneval_metadata_is_validated(tmp_path: Path, include: object, exclude: object, reason: str) -> None:
    path = tmp_path / "meta.jsonl"
    path.write_bytes(_geneval_line(include, exclude) + b"\n")
    imported = read_prompts(path)
    assert imported.prompts == [] and len(imported.bad) == 1
    assert reason in imported.bad[0].reason, imported.bad[0].reason


def test_valid_geneval_metadata_is_kept_in_canonical_form(tmp_path: Path) -> None:
    path = tmp_path / "meta.jsonl"
    include = [
        {"class": " cat ", "count": 2, "color": "red", "note": "dropped"},
        {"class": "dog", "count": 1, "position": ["left of", 0]},
    ]
    path.write_bytes(_geneval_line(include, [{"class": "cat", "count": 3}]) + b"\n")
    (prompt,) = read_prompts(path).prompts
    assert json.loads(prompt.geneval) == {
        "include": [
            {"class": "cat", "count": 2, "color": "red"},
            {"class": "dog", "count": 1, "position": ["left of", 0]},
        ],
        "exclude": [{"class": "cat", "count": 3}],
    }


def test_conflicting_geneval_entries_for_one_prompt_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "meta.jsonl"
    two, three = [{"class": "cat", "count": 2}], [{"class": "cat", "count": 3}]
    path.write_bytes(
        b"\n".join(
            [
                _geneval_line(two, prompt="some cats"),
                _geneval_line(two, prompt="Some cats."),
                _geneval_line(three, prompt="some cats"),
            ]
        )
    )
    imported = read_prompts(path)
    assert [p.locator for p in imported.prompts] == ["line 1"]
    assert [(q.locator, q.reason) for q in imported.duplicates] == [("line 2", "duplicate of line 1")]
    assert [(q.locator, q.reason) for q in imported.bad] == [
        ("line 3", "same prompt as line 1, with different GenEval metadata (the first is kept)")
    ]


# --- through the real assets ------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh FIRM_HOME; the import assets need no models."""
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "firm-home"))
    for name in ("FIRM_EDIT_REQUESTS", "FIRM_GEN_PROMPTS", "FIRM_PROFILE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "firm-home"


def _materialize(assets: list[str], run_config: dict) -> bool:
    result = materialize(
        [*ASSETS, *CHECKS],
        resources=build_resources(),
        run_config=run_config,
        selection=AssetSelection.assets(*assets),
    )
    return result.success


def test_edit_import_assets_give_every_line_an_outcome(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (48, 48), "red").save(root / "images" / "good.png")
    lines = [_json(prompt="Make the square blue", image="images/good.png")]
    lines += [line for _, line, _ in BAD_JSONL_LINES + BAD_EDIT_ONLY_LINES]
    long_name = "images/" + "n" * 300 + ".png"
    lines += [
        b"",
        _json(prompt="Make the square blue", image="images/good.png"),  # a repeat of line 1
        _json(prompt="Make it green", image="images/absent.png"),  # its image is missing
        _json(prompt="Make it round", image="images/good.png", edited_images=[long_name]),
    ]
    requests_file = root / "requests.jsonl"
    requests_file.write_bytes(b"\r\n".join(lines) + b"\r\n")
    n = len(lines)

    assert _materialize(
        ["edit_requests", "source_images"],
        {"ops": {"edit_requests": {"config": {"requests_path": str(requests_file)}}}},
    )
    wh = Warehouse(Path(warehouse_path()))
    imported = wh.query("SELECT line, instruction FROM assets.edit_requests ORDER BY line")
    assert imported.rows() == [(1, "Make the square blue"), (n - 1, "Make it green"), (n, "Make it round")]
    bad = wh.query("SELECT source, locator, reason FROM quarantine WHERE asset = 'edit_requests'")
    assert set(bad["source"]) == {str(requests_file)}
    outcomes = sorted([f"line {i}" for i in imported["line"]] + bad["locator"].to_list())
    assert outcomes == sorted(f"line {i}" for i in range(1, n + 1) if i != n - 3)  # all but the blank
    assert bad.filter(bad["locator"] == f"line {n - 2}")["reason"].to_list() == ["duplicate of line 1"]
    # Image rejections name the request file and line; the request with a bad edit keeps its source.
    rejected = wh.query("SELECT source, locator, raw, reason FROM quarantine WHERE asset = 'source_images'")
    images = {row[1]: row for row in rejected.rows()}
    assert sorted(images) == [f"line {n - 1}: image", f"line {n}: edited_images[0]"]
    source, _, raw, reason = images[f"line {n - 1}: image"]
    assert (source, raw) == (str(requests_file), "images/absent.png")
    assert reason.startswith("source image: ") and "missing file" in reason
    source, _, raw, reason = images[f"line {n}: edited_images[0]"]
    assert (source, raw) == (str(requests_file), long_name) and reason.startswith("edited image: ")
    kept = wh.query("SELECT instruction, imported_edit_shas FROM assets.source_images ORDER BY instruction")
    assert kept.rows() == [("Make it round", []), ("Make the square blue", [])]


def test_gen_prompts_asset_gives_every_line_an_outcome(home: Path, tmp_path: Path) -> None:
    text = tmp_path / "prompts.txt"
    text.write_bytes(b"\n".join([b"a red cat", *(line for _, line, _ in BAD_TEXT_LINES), b"", b"A red cat."]))
    meta = tmp_path / "meta.jsonl"
    meta.write_bytes(
        b"\n".join(
            [
                _geneval_line([{"class": "dog", "count": 2}], prompt="two dogs"),
                *(line for _, line, _ in BAD_JSONL_LINES),
                _geneval_line([{"class": "dog", "count": 0}], prompt="no dogs"),
            ]
        )
    )
    missing = tmp_path / "absent.txt"
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)

    files = [str(text), str(meta), str(missing), str(loop)]
    assert _materialize(["gen_prompts"], {"ops": {"gen_prompts": {"config": {"prompt_files": files}}}})
    wh = Warehouse(Path(warehouse_path()))
    rows = wh.query("SELECT prompt, source, locator FROM assets.gen_prompts ORDER BY source, locator")
    assert rows.rows() == [("two dogs", str(meta), "line 1"), ("a red cat", str(text), "line 1")]
    bad = wh.query("SELECT source, locator, reason FROM quarantine WHERE asset = 'gen_prompts'")
    by_file = {path: sorted(bad.filter(bad["source"] == path)["locator"]) for path in files}
    text_lines = len(BAD_TEXT_LINES) + 3
    assert by_file[str(text)] == sorted(
        [f"line {i}" for i in range(2, text_lines + 1) if i != text_lines - 1]
    )  # every line but the good first one and the blank one; the last is a duplicate
    assert by_file[str(meta)] == sorted(f"line {i}" for i in range(2, len(BAD_JSONL_LINES) + 3))
    assert by_file[str(missing)] == ["file"] and by_file[str(loop)] == ["file"]
    duplicate = bad.filter((bad["source"] == str(text)) & (bad["locator"] == f"line {text_lines}"))
    assert duplicate["reason"].to_list() == ["duplicate of line 1"]
