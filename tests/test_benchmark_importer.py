"""FIRM-Bench import: field-name variants, every kind of bad input, and the demo bench end to end."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from firm_assets.benchmark.demo import main, write_demo_bench
from firm_assets.benchmark.importer import BenchItem, LabelConflict, bench_version, read_firm_bench
from firm_assets.edit.demo import write_demo_edit_dataset


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_jsonl(path: Path, records: list[object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{r if isinstance(r, str) else json.dumps(r)}\n" for r in records))


def _bench(
    root: Path, side: str, items: list[object], labels: list[object], folder: str | None = None
) -> Path:
    """A FIRM-Bench side with images a.png, b.png, c.png under `images/`."""
    side_dir = root / (folder or side)
    (side_dir / "images").mkdir(parents=True, exist_ok=True)
    for name, colour in (("a", "red"), ("b", "blue"), ("c", "green")):
        (side_dir / "images" / f"{name}.png").write_bytes(_png(colour))
    _write_jsonl(side_dir / "bench_v1.jsonl", items)
    _write_jsonl(side_dir / "result" / "human_bench_v1.jsonl", labels)
    return side_dir


def _edit_item(item_id: object, instruction: str = "p", edited: str = "b") -> dict[str, object]:
    """An edit item in the published layout: `image` lists images/a.png (source), then the edited one."""
    return {"id": item_id, "instruction": instruction, "image": ["images/a.png", f"images/{edited}.png"]}


def _reasons(bad: list) -> list[str]:
    return [entry.reason for entry in bad]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- field-name variants ------------------------------------------------------------------------


def test_edit_field_name_variants_all_import(tmp_path: Path) -> None:
    side_dir = _bench(
        tmp_path,
        "edit",
        [
            {
                "id": "e1",
                "instruction": "make it blue",
                "image": ["images/a.png", "images/b.png"],
                "model": "m1",
            },
            {
                "idx": 2,
                "prompt": "p2",
                "input_image": "images/a.png",
                "output_image": "images/c.png",
                "editor": "m2",
                "task_type": "color_alter",
            },
            {
                "key": "k3",
                "edit_instruction": "p3",
                "src_image": "images/b.png",
                "result_image": "images/a.png",
                "model_name": "m3",
                "edit_type": "subject-remove",
            },
            {"item_id": "e4", "text": "p4", "original_image": "images/c.png", "edit_image": "images/b.png"},
        ],
        [
            {"id": "e1", "execution": {"score": [5]}, "consistency": {"score": [4]}},
            {"idx": 2, "execution_score": 3, "consistency_score": "4"},
            {"key": "k3", "exec": [2], "cons": {"score": 1.5}},
            {"item_id": "e4", "instruction_score": 1, "consistency": 5},
        ],
    )
    items, bad, conflicts = read_firm_bench(tmp_path, "edit")
    assert (bad, conflicts) == ([], [])
    by_id = {item.item_id: item for item in items}
    assert [by_id[i].human for i in ("e1", "2", "k3", "e4")] == [
        {"execution": 5.0, "consistency": 4.0},
        {"execution": 3.0, "consistency": 4.0},
        {"execution": 2.0, "consistency": 1.5},
        {"execution": 1.0, "consistency": 5.0},
    ]
    assert [by_id[i].editor for i in ("e1", "2", "k3", "e4")] == ["m1", "m2", "m3", None]
    assert [by_id[i].category for i in ("e1", "2", "k3", "e4")] == [
        "all",
        "color_alter",
        "subject-remove",
        "all",
    ]
    assert by_id["2"].text == "p2"
    images = side_dir.resolve() / "images"
    assert by_id["e1"].images == (str(images / "a.png"), str(images / "b.png"))
    assert by_id["k3"].images == (str(images / "b.png"), str(images / "a.png"))
    assert by_id["e1"].image_shas == tuple(
        hashlib.sha256((images / name).read_bytes()).hexdigest() for name in ("a.png", "b.png")
    )


def test_gen_variants_and_the_published_layout_import(tmp_path: Path) -> None:
    """`FIRM-Bench-Gen/` with `image: [path]` and `instruction_following.score[0]`, as gen_mae.py reads it."""
    _bench(
        tmp_path,
        "gen",
        [
            {"id": 0, "prompt": "a red square", "image": ["images/a.png"]},
            {"index": 1, "text": "t1", "image_path": "images/b.png", "tag": "counting"},
            {"id": "g2", "instruction": "t2", "output_image": "images/c.png", "category": "colors"},
            {"id": "g3", "prompt": "t3", "images": ["images/c.png"]},
        ],
        [
            {"id": 0, "image": ["images/a.png"], "instruction_following": {"score": [4], "reasoning": "ok"}},
            {"index": 1, "human_score": 2},
            {"id": "g2", "if_score": "3.5"},
            {"id": "g3", "alignment": 1},
        ],
        folder="FIRM-Bench-Gen",
    )
    items, bad, conflicts = read_firm_bench(tmp_path, "gen")
    assert (bad, conflicts) == ([], [])
    assert {item.item_id: item.human["instruction"] for item in items} == {"0": 4, "1": 2, "g2": 3.5, "g3": 1}
    assert {item.item_id: item.category for item in items} == {
        "0": "all",
        "1": "counting",
        "g2": "colors",
        "g3": "all",
    }
    assert all(len(item.images) == len(item.image_shas) == 1 and item.side == "gen" for item in items)


# --- bad input: quarantined with a reason, never a crash ----------------------------------------


def test_items_without_labels_are_quarantined(tmp_path: Path) -> None:
    _bench(
        tmp_path,
        "gen",
        [
            {"id": "g1", "prompt": "p", "image": "images/a.png"},
            {"id": "g2", "prompt": "p", "image": "images/b.png"},
        ],
        [{"id": "g1", "score": 4}],
    )
    items, bad, _ = read_firm_bench(tmp_path, "gen")
    assert [item.item_id for item in items] == ["g1"]
    assert _reasons(bad) == ["no valid human label"]
    assert '"g2"' in bad[0].raw and bad[0].locator == "line 2"


def test_conflicting_labels_exclude_the_item_and_identical_duplicates_are_fine(tmp_path: Path) -> None:
    _bench(
        tmp_path,
        "edit",
        [
            _edit_item("same"),
            _edit_item("differ", edited="c"),
        ],
        [
            {"id": "same", "execution": 4, "consistency": 5},
            {"id": "differ", "execution": 4, "consistency": 5},
            {"id": "same", "execution": [4], "consistency": {"score": [5]}},
            {"id": "differ", "execution": 2, "consistency": 5},
            {"id": "differ", "execution": 4, "consistency": 5},
        ],
    )
    items, bad, conflicts = read_firm_bench(tmp_path, "edit")
    assert [item.item_id for item in items] == ["same"]
    assert bad == []
    assert conflicts == [LabelConflict("differ", "execution", (4.0, 2.0))]


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("images/truncated.png", "corrupt or truncated image"),
        ("images/garbage.png", "not a recognised image"),
        ("images/empty.png", "empty file"),
        ("images/nowhere.png", "missing file"),
        ("../outside.png", "escapes the dataset root"),
        ("/etc/passwd", "absolute image path"),
        ("images", "not a regular file"),
    ],
)
def test_bad_or_escaping_images_are_quarantined(tmp_path: Path, image: str, reason: str) -> None:
    side_dir = _bench(
        tmp_path,
        "edit",
        [
            _edit_item("ok"),
            {"id": "bad", "instruction": "p", "source_image": "images/a.png", "edited_image": image},
        ],
        [{"id": "ok", "execution": 5, "consistency": 5}, {"id": "bad", "execution": 5, "consistency": 5}],
    )
    (side_dir / "images" / "truncated.png").write_bytes(_png("white")[:-20])
    (side_dir / "images" / "garbage.png").write_bytes(b"this is not an image")
    (side_dir / "images" / "empty.png").write_bytes(b"")
    (tmp_path / "outside.png").write_bytes(_png("white"))
    items, bad, _ = read_firm_bench(tmp_path, "edit")
    assert [item.item_id for item in items] == ["ok"]
    assert len(bad) == 1 and reason in bad[0].reason


@pytest.mark.parametrize(
    ("label", "reason"),
    [
        (0, "outside 1-5"),
        (6, "outside 1-5"),
        (5.5, "outside 1-5"),
        ("NaN", "outside 1-5"),
        ("high", "not a number"),
        (True, "must be a number"),
        ([], "empty list"),
        ({"value": 3}, "without 'score'"),
        ([[[[[3]]]]], "must be a number"),
    ],
)
def test_out_of_range_or_malformed_labels_are_quarantined(tmp_path: Path, label: object, reason: str) -> None:
    _bench(
        tmp_path,
        "gen",
        [{"id": "g1", "prompt": "p", "image": "images/a.png"}],
        [{"id": "g1", "instruction_following": label}],
    )
    items, bad, conflicts = read_firm_bench(tmp_path, "gen")
    assert (items, conflicts) == ([], [])
    assert reason in bad[0].reason and bad[0].source.endswith("human_bench_v1.jsonl")
    assert _reasons(bad)[1:] == ["no valid human label"]


def test_unknown_ids_bad_lines_and_duplicates_are_quarantined(tmp_path: Path) -> None:
    _bench(
        tmp_path,
        "edit",
        [
            _edit_item("e1"),
            _edit_item("e1", "again"),
            "{not json",
            "[1, 2]",
            "",
            {"instruction": "no id", "image": ["images/a.png", "images/b.png"]},
            {"id": "e3", "instruction": "one image only", "image": ["images/a.png"]},
            {"id": "e4", "instruction": "p", "edited_image": "images/a.png"},
            _edit_item("e5", "   "),
            _edit_item(1.5),
        ],
        [
            {"id": "e1", "execution": 5, "consistency": 5},
            {"id": "ghost", "execution": 5, "consistency": 5},
            {"id": "e1", "execution": 5},
        ],
    )
    items, bad, conflicts = read_firm_bench(tmp_path, "edit")
    assert [item.item_id for item in items] == ["e1"] and conflicts == []
    reasons = _reasons(bad)
    expected = [
        "duplicate item id 'e1'",
        "malformed JSON",
        "not a JSON object",
        "missing item id",
        "missing edited image",
        "missing source image",
        "empty instruction",
        "id must be a string or an integer",
        "label for unknown item id 'ghost'",
        "missing consistency label",
    ]
    assert len(reasons) == len(expected)
    for got, want in zip(reasons, expected, strict=True):
        assert want in got


def test_missing_files_raise_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"edit/bench_v1\.jsonl or .*FIRM-Bench-Edit/bench_v1\.jsonl"):
        read_firm_bench(tmp_path, "edit")
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "bench_v1.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match=r"result/human_bench_v1\.jsonl"):
        read_firm_bench(tmp_path, "gen")
    with pytest.raises(ValueError, match="side must be one of"):
        read_firm_bench(tmp_path, "video")


# --- store, versioning -------------------------------------------------------------------------


def test_store_holds_copies_and_the_version_ignores_location(tmp_path: Path) -> None:
    write_demo_bench(tmp_path / "bench", n_edit=4, n_gen=4)
    originals, _, _ = read_firm_bench(tmp_path / "bench", "edit")
    stored, _, _ = read_firm_bench(tmp_path / "bench", "edit", store=tmp_path / "store")
    assert [item.image_shas for item in stored] == [item.image_shas for item in originals]
    for item in stored:
        assert all(Path(path).is_relative_to(tmp_path / "store") for path in item.images)
        assert [Path(path).name.split(".")[0] for path in item.images] == list(item.image_shas)
    assert bench_version(stored) == bench_version(reversed(originals))


def test_bench_version_changes_with_any_label_text_or_image() -> None:
    item = BenchItem("1", "gen", "p", ("/x.png",), ("a" * 64,), "all", None, {"instruction": 3.0})
    base = bench_version([item])
    changed = [
        BenchItem("1", "gen", "p", ("/x.png",), ("a" * 64,), "all", None, {"instruction": 4.0}),
        BenchItem("1", "gen", "q", ("/x.png",), ("a" * 64,), "all", None, {"instruction": 3.0}),
        BenchItem("1", "gen", "p", ("/x.png",), ("b" * 64,), "all", None, {"instruction": 3.0}),
    ]
    assert len({base, *(bench_version([other]) for other in changed)}) == 4
    moved = BenchItem("1", "gen", "p", ("/elsewhere/x.png",), ("a" * 64,), "all", None, {"instruction": 3.0})
    assert bench_version([moved]) == base


# --- the demo bench ----------------------------------------------------------------------------


def test_demo_bench_round_trips_with_no_quarantine(tmp_path: Path) -> None:
    root = write_demo_bench(tmp_path / "bench")
    edit, bad_edit, conflicts_edit = read_firm_bench(root, "edit")
    gen, bad_gen, conflicts_gen = read_firm_bench(root, "gen")
    assert (bad_edit, conflicts_edit, bad_gen, conflicts_gen) == ([], [], [], [])
    assert (len(edit), len(gen)) == (16, 12)
    assert {item.category for item in edit} <= {"recolour", "remove", "move", "reshape", "add", "background"}
    assert {item.category for item in gen} == {"counting", "colors", "color_attr", "position"}
    assert {item.human["instruction"] for item in gen} == {1, 2, 3, 5}
    assert {item.human["execution"] for item in edit} >= {1, 5}
    assert {item.human["consistency"] for item in edit} >= {3, 4, 5}
    assert all(item.editor for item in edit) and all(item.editor is None for item in gen)


def test_demo_bench_labels_follow_the_flaws(tmp_path: Path) -> None:
    """Over many items every flaw of the edit demo shows up with its rubric label."""
    items, bad, _ = read_firm_bench(write_demo_bench(tmp_path, n_edit=80, n_gen=0), "edit")
    assert bad == []
    pairs = {(item.human["execution"], item.human["consistency"]) for item in items}
    assert pairs >= {(5, 5), (5, 4), (1, 5), (1, 2), (5, 3)}
    for item in items:
        source, edited = item.image_shas
        if item.human == {"execution": 1, "consistency": 5} and item.category not in {"add", "background"}:
            assert source == edited  # not executed: the edited image is the source


def test_demo_bench_is_deterministic_and_seeded(tmp_path: Path) -> None:
    write_demo_bench(tmp_path / "a", seed=3)
    main([str(tmp_path / "b"), "--seed", "3"])
    write_demo_bench(tmp_path / "c", seed=4)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert _tree(tmp_path / "a") != _tree(tmp_path / "c")
    versions = [bench_version(read_firm_bench(tmp_path / name, "gen")[0]) for name in "abc"]
    assert versions[0] == versions[1] != versions[2]


def test_demo_bench_images_never_coincide_with_the_demo_dataset(tmp_path: Path) -> None:
    root = write_demo_bench(tmp_path / "bench", n_edit=60, n_gen=24)
    bench_shas = {
        sha for side in ("edit", "gen") for item in read_firm_bench(root, side)[0] for sha in item.image_shas
    }
    for n in (12, 1000):
        demo = write_demo_edit_dataset(tmp_path / f"demo{n}", n=n, seed=0).parent
        demo_shas = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (demo / "images").glob("*.png")}
        assert demo_shas and not bench_shas & demo_shas
