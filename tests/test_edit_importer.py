"""Every bad line of an edit-request JSONL is quarantined with a reason; the rest still import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firm_assets.curation.lines import Quarantined
from firm_assets.edit.importer import EditRequest, read_edit_requests, request_id_for


def _line(**record: object) -> bytes:
    return json.dumps(record).encode()


def _write(tmp_path: Path, lines: list[bytes], name: str = "requests.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _by_locator(bad: list[Quarantined]) -> dict[str, str]:
    return {q.locator: q.reason for q in bad}


def test_valid_lines_become_requests(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            _line(prompt="  Remove the cat  ", image="images/1.png", requirement="Keep the dog."),
            _line(instruction="Make it night", image="images/2.png", edited_images=["e/a.png", "e/b.png"]),
            _line(prompt="Add a hat", image="images/3.png", edited_image="e/c.png", requirement="  "),
        ],
    )
    requests, bad = read_edit_requests(path)
    assert bad == []
    first, second, third = requests
    assert (first.instruction, first.requirement, first.edited_images) == (
        "Remove the cat",
        "Keep the dog.",
        (),
    )
    assert (second.instruction, second.edited_images) == ("Make it night", ("e/a.png", "e/b.png"))
    assert (third.requirement, third.edited_images) == (None, ("e/c.png",))
    assert first.request_id == request_id_for("Remove the cat", "Keep the dog.", "images/1.png", ())
    assert all(len(r.request_id) == 16 for r in requests)


def test_bad_lines_are_quarantined_and_the_rest_imported(tmp_path: Path) -> None:
    lines = [
        _line(prompt="ok one", image="a.png"),  # 1
        b"",  # 2 blank: skipped
        b'{"prompt": "broken", "image": ',  # 3
        b"[1, 2, 3]",  # 4
        b'{"prompt": "caf\xe9", "image": "a.png"}',  # 5 latin-1, not UTF-8
        _line(prompt="", image="a.png"),  # 6
        _line(prompt="   \t ", image="a.png"),  # 7
        _line(image="a.png"),  # 8
        _line(prompt="no image"),  # 9
        _line(prompt=42, image="a.png"),  # 10
        _line(prompt="x", image=["a.png"]),  # 11
        _line(prompt="x", image="a.png", requirement=7),  # 12
        _line(prompt="x", image="a.png", edited_images="e.png"),  # 13
        _line(prompt="x" * 2001, image="a.png"),  # 14
        _line(prompt="ok one", image="a.png"),  # 15 duplicate of line 1
        _line(prompt="x", image="a.png", edited_images=["e.png", 3]),  # 16
        _line(prompt="a", instruction="b", image="a.png"),  # 17
        _line(prompt="x", image="   "),  # 18
        b"[" * 100_000,  # 19
        _line(prompt="ok two", image="b.png"),  # 20
    ]
    requests, bad = read_edit_requests(_write(tmp_path, lines))
    assert [r.instruction for r in requests] == ["ok one", "ok two"]
    reasons = _by_locator(bad)
    expected = {
        "line 3": "malformed JSON",
        "line 4": "not a JSON object (got list)",
        "line 5": "not valid UTF-8",
        "line 6": "empty instruction",
        "line 7": "empty instruction",
        "line 8": "missing instruction",
        "line 9": "missing image",
        "line 10": "instruction must be a string",
        "line 11": "image must be a string path",
        "line 12": "requirement must be a string",
        "line 13": "edited_images must be a list",
        "line 14": "instruction too long: 2001 chars > 2000",
        "line 15": "duplicate of line 1",
        "line 16": "edited_images item must be a string path",
        "line 17": "both 'prompt' and 'instruction'",
        "line 18": "empty image path",
        "line 19": "malformed JSON",
    }
    assert sorted(reasons) == sorted(expected)
    for locator, fragment in expected.items():
        assert fragment in reasons[locator], (locator, reasons[locator])
    assert all(q.source == str(tmp_path / "requests.jsonl") for q in bad)


def test_quarantine_keeps_raw_text_truncated_and_decoded(tmp_path: Path) -> None:
    long_garbage = b"{" + b"x" * 5000
    path = _write(tmp_path, [long_garbage, b'{"prompt": "\xff\xfe", "image": "a.png"}'])
    _, bad = read_edit_requests(path)
    assert len(bad[0].raw) == 2000
    assert bad[0].raw.startswith("{xxx")
    assert bad[1].reason == "not valid UTF-8"
    assert "\ufffd" in bad[1].raw


def test_request_ids_do_not_depend_on_line_order(tmp_path: Path) -> None:
    lines = [
        _line(prompt=f"edit {i}", image=f"{i}.png", requirement="keep" if i % 2 else None) for i in range(5)
    ]
    forward, _ = read_edit_requests(_write(tmp_path, lines, "a.jsonl"))
    backward, _ = read_edit_requests(_write(tmp_path, lines[::-1], "b.jsonl"))
    assert {r.request_id: r for r in forward} == {r.request_id: r for r in backward}
    assert len({r.request_id for r in forward}) == 5


def test_ids_change_with_every_field() -> None:
    base = request_id_for("do it", None, "a.png", ())
    variants = [
        request_id_for("do it!", None, "a.png", ()),
        request_id_for("do it", "keep", "a.png", ()),
        request_id_for("do it", None, "b.png", ()),
        request_id_for("do it", None, "a.png", ("e.png",)),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_bom_and_crlf_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "win.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + _line(prompt="a", image="1.png") + b"\r\n" + _line(prompt="b", image="2.png")
    )
    requests, bad = read_edit_requests(path)
    assert bad == []
    assert [r.image for r in requests] == ["1.png", "2.png"]


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_edit_requests(tmp_path / "absent.jsonl")


def test_empty_file_gives_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert read_edit_requests(tmp_path / "empty.jsonl") == ([], [])


def test_request_is_frozen() -> None:
    request = EditRequest("id", "do", None, "a.png", (), 1)
    with pytest.raises(AttributeError):
        request.instruction = "other"  # type: ignore[misc]
