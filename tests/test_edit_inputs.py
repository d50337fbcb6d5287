"""Bad and real inputs through the materialized graph: quarantined with reasons, the run succeeds."""

import io
import json
import shutil
from pathlib import Path

import polars as pl
from graph_runs import edit_config, materialize_group, write_requests
from PIL import Image

from resources.home import warehouse_path
from warehouse.connection import Warehouse


def _png(path: Path, size: tuple[int, int] = (48, 48), colour: str = "red") -> None:
    Image.new("RGB", size, colour).save(path)


def test_bad_inputs_are_quarantined_and_the_run_succeeds(firm_home: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    images = root / "images"
    images.mkdir(parents=True)
    _png(images / "good.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(buffer, "JPEG")
    (images / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.new("RGB", (16, 16), "green").save(images / "image.bmp")
    (tmp_path / "outside.png").write_bytes((images / "good.png").read_bytes())
    rows = [
        {"prompt": "Make the square blue", "image": "images/good.png"},
        {"prompt": "Fix it", "image": "images/corrupt.png"},
        {"prompt": "Fix it", "image": "images/truncated.jpg"},
        {"prompt": "Fix it", "image": "images/image.bmp"},
        {"prompt": "Fix it", "image": "images/missing.png"},
        {"prompt": "Fix it", "image": "../outside.png"},
        {"prompt": "   ", "image": "images/good.png"},
    ]
    requests = write_requests(root / "requests.jsonl", rows)
    with requests.open("ab") as handle:
        handle.write(b'{"prompt": "unterminated\n')
        handle.write(b'{"prompt": "caf\xe9", "image": "images/good.png"}\n')

    result = materialize_group("edit", edit_config(requests))
    assert result.success
    wh = Warehouse(Path(warehouse_path()))
    assert wh.query("SELECT * FROM assets.source_images").height == 1
    reasons = wh.query("SELECT asset, locator, reason FROM quarantine ORDER BY asset, locator")
    by_asset = reasons.group_by("asset").len().sort("asset")
    assert dict(by_asset.iter_rows()) == {"edit_requests": 3, "source_images": 5}
    images_bad = wh.query("SELECT source, locator, raw FROM quarantine WHERE asset = 'source_images'")
    assert set(images_bad["source"]) == {str(requests)}  # each row points at its request's file and line
    assert sorted(images_bad["locator"]) == [f"line {n}: image" for n in range(2, 7)]
    assert "images/corrupt.png" in images_bad.filter(pl.col("locator") == "line 2: image")["raw"].to_list()
    text = " | ".join(reasons["reason"].str.to_lowercase())
    for expected in (
        "utf-8",
        "json",
        "instruction",
        "unsupported format",
        "escapes",
        "missing file",
        "truncat",
    ):
        assert expected in text, (expected, text)
    scores = wh.query("SELECT * FROM assets.edit_scores")
    assert scores.height >= 1


def test_shared_real_edit_pairs_go_through_ingestion_and_captioning(
    firm_home: Path, tmp_path: Path, shared_data: Path
) -> None:
    root = tmp_path / "pairs"
    shutil.copytree(shared_data / "edit_pairs", root / "images")
    groups = sorted({p.name.split("-")[0] for p in (root / "images").iterdir()})
    rows = [
        {
            "prompt": "Improve the photo as requested by the user.",
            "image": f"images/{group}-0.jpg",
            "edited_images": [f"images/{group}-{k}.webp" for k in range(1, 5)],
        }
        for group in groups
    ]
    result = materialize_group("edit", edit_config(write_requests(root / "requests.jsonl", rows)))
    assert result.success
    wh = Warehouse(Path(warehouse_path()))
    sources = wh.query("SELECT * FROM assets.source_images")
    assert sources.height == len(groups) == 3
    formats = wh.query(  # the imported images; the editors' renders are note-free PNGs
        "SELECT format, note, count(*) AS n FROM images WHERE format <> 'PNG' OR note <> ''"
        " GROUP BY ALL ORDER BY format"
    )
    # 2-2.webp is a cut-out with transparent pixels: stored composited on white, as a PNG.
    assert formats.rows() == [
        ("JPEG", "", 3),
        ("PNG", "from WEBP: RGBA transparency composited on (255, 255, 255)", 1),
        ("WEBP", "", 11),
    ]
    candidates = wh.query("SELECT * FROM assets.edit_candidates")
    assert candidates.filter(pl.col("editor") == "imported").height == 12
    captions = wh.query("SELECT * FROM assets.difference_captions")
    assert captions.height == candidates.height
    assert set(captions["candidate_id"]) == set(candidates["candidate_id"])
    assert json.loads(json.dumps(sources["width"].to_list()))  # real, mixed sizes
    assert sources["width"].n_unique() + sources["height"].n_unique() > 2
