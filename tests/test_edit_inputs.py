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

SHARED_PAIRS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "edit_pairs"


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
    Image.new("RGB", (16, 16), "green").save(images / "image.gif")
    (tmp_path / "outside.png").write_bytes((images / "good.png").read_bytes())
    rows = [
        {"prompt": "Make the square blue", "image": "images/good.png"},
        {"prompt": "Fix it", "image": "images/corrupt.png"},
        {"prompt": "Fix it", "image": "images/truncated.jpg"},
        {"prompt": "Fix it", "image": "images/image.gif"},
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


def test_shared_real_edit_pairs_go_through_ingestion_and_captioning(firm_home: Path, tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    shutil.copytree(SHARED_PAIRS, root / "images")
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
    formats = wh.query("SELECT format, count(*) AS n FROM images GROUP BY format ORDER BY format")
    assert dict(formats.iter_rows())["WEBP"] == 12
    assert dict(formats.iter_rows())["JPEG"] == 3
    candidates = wh.query("SELECT * FROM assets.edit_candidates")
    assert candidates.filter(pl.col("editor") == "imported").height == 12
    captions = wh.query("SELECT * FROM assets.difference_captions")
    assert captions.height == candidates.height
    assert set(captions["candidate_id"]) == set(candidates["candidate_id"])
    assert json.loads(json.dumps(sources["width"].to_list()))  # real, mixed sizes
    assert sources["width"].n_unique() + sources["height"].n_unique() > 2
