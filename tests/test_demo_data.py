"""The demo edit dataset is deterministic, fast, and imports cleanly end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import Image

from firm_assets.curation.images import ingest_image, resolve_under
from firm_assets.edit.demo import CANVAS, main, write_demo_edit_dataset
from firm_assets.edit.importer import read_edit_requests


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    write_demo_edit_dataset(tmp_path / "a", n=12, seed=3)
    write_demo_edit_dataset(tmp_path / "b", n=12, seed=3)
    write_demo_edit_dataset(tmp_path / "c", n=12, seed=4)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert _tree(tmp_path / "a")["requests.jsonl"] != _tree(tmp_path / "c")["requests.jsonl"]


def test_rewriting_is_idempotent(tmp_path: Path) -> None:
    path = write_demo_edit_dataset(tmp_path, n=12)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    before_bytes = _tree(tmp_path)
    assert write_demo_edit_dataset(tmp_path, n=12) == path
    assert _tree(tmp_path) == before_bytes
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_every_request_imports_and_its_images_ingest(tmp_path: Path) -> None:
    path = write_demo_edit_dataset(tmp_path / "demo", n=24, seed=1)
    assert path == tmp_path / "demo" / "requests.jsonl"
    requests, bad = read_edit_requests(path)
    assert bad == []
    assert len(requests) == 24
    for request in requests:
        for relative in (request.image, *request.edited_images):
            stored = ingest_image(resolve_under(path.parent, relative), tmp_path / "store")
            assert (stored.format, stored.width, stored.height) == ("PNG", CANVAS, CANVAS)
    with_candidates = [r for r in requests if r.edited_images]
    assert 0 < len(with_candidates) < len(requests)
    assert any(len(r.edited_images) == 2 for r in requests)
    assert any(r.requirement for r in requests)


def test_candidates_include_correct_and_flawed_edits(tmp_path: Path) -> None:
    path = write_demo_edit_dataset(tmp_path, n=60)
    labels = [json.loads(line) for line in (tmp_path / "expected.jsonl").read_text().splitlines()]
    requests, _ = read_edit_requests(path)
    assert {label["edited_image"] for label in labels} == {e for r in requests for e in r.edited_images}
    assert {label["follows_instruction"] for label in labels} == {True, False}
    assert {label["flaw"] for label in labels} - {None} >= {"not executed", "wrong target"}
    for label in labels:
        with (
            Image.open(tmp_path / label["image"]) as source,
            Image.open(tmp_path / label["edited_image"]) as edited,
        ):
            assert source.tobytes() != edited.tobytes() or label["flaw"] == "not executed"


def test_instructions_vary_and_pngs_carry_no_metadata(tmp_path: Path) -> None:
    path = write_demo_edit_dataset(tmp_path, n=30)
    requests, _ = read_edit_requests(path)
    verbs = {r.instruction.split()[0] for r in requests}
    assert len(verbs) >= 4
    for png in (tmp_path / "images").glob("*.png"):
        data = png.read_bytes()
        assert not any(chunk in data for chunk in (b"tEXt", b"tIME", b"pHYs", b"iTXt"))


def test_thousand_requests_write_quickly(tmp_path: Path) -> None:
    # CPU seconds, not wall time: the bound is on the work, which a loaded machine does not change
    start = time.process_time()
    write_demo_edit_dataset(tmp_path, n=1000)
    assert time.process_time() - start < 15
    assert len((tmp_path / "requests.jsonl").read_text().splitlines()) == 1000


def test_cli_writes_the_dataset(tmp_path: Path, capsys) -> None:
    main([str(tmp_path / "cli"), "--n", "3", "--seed", "2"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "requests.jsonl")
    requests, bad = read_edit_requests(tmp_path / "cli" / "requests.jsonl")
    assert (len(requests), bad) == (3, [])
