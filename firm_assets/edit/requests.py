"""`edit_requests` and `source_images`: import FIRM-style JSONL (the configured file, then the requests
imported from the edit inbox), then validate and store the images.

Two assets so that a fixed typo in one line re-validates no images, and a corrupt image quarantines
one request, never the run: any error while reading one image becomes a quarantine row naming the
request file and line.
"""

import json
import os
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, Config, DataVersion, MetadataValue, Output, asset
from pydantic import Field

from firm_assets.automation import CURATION_CONDITION
from firm_assets.curation.images import ImageRejected, StoredImage, ingest_image, resolve_under
from firm_assets.curation.lines import BadLine, Quarantined, attempt, quarantined
from firm_assets.curation.records import (
    SCORE_TEXT_FLAG,
    record_images,
    record_input_flags,
    record_quarantine,
    score_text_flags,
)
from firm_assets.curation.versioning import frame_version
from firm_assets.edit.demo import write_demo_edit_dataset
from firm_assets.edit.importer import read_edit_requests
from firm_assets.edit.inbox import inbox_edit_rows
from resources.home import firm_home
from resources.warehouse_resource import WarehouseResource

GROUP = "edit"
REQUESTS_ENV = "FIRM_EDIT_REQUESTS"

REQUEST_SCHEMA = {
    "request_id": pl.String,
    "instruction": pl.String,
    "requirement": pl.String,
    "image": pl.String,
    "edited_images": pl.List(pl.String),
    "images_root": pl.String,
    "source": pl.String,
    "line": pl.Int64,
}
SOURCE_SCHEMA = {
    "request_id": pl.String,
    "instruction": pl.String,
    "requirement": pl.String,
    "source_sha": pl.String,
    "source_path": pl.String,
    "width": pl.Int64,
    "height": pl.Int64,
    "imported_edit_shas": pl.List(pl.String),
    "imported_edit_paths": pl.List(pl.String),
}


class EditRequestsConfig(Config):
    """Where the editing requests and their images come from."""

    requests_path: str = Field(
        default="", description=f"FIRM-style JSONL; empty: ${REQUESTS_ENV}, else the built-in demo set."
    )
    images_root: str = Field(
        default="", description="Folder image paths are relative to; empty: the JSONL's."
    )
    demo_size: int = Field(default=12, description="Requests in the built-in demo set.")


def requests_file(config: EditRequestsConfig) -> Path:
    """The JSONL this run imports: explicit config, then the environment, then the demo set."""
    chosen = config.requests_path or os.environ.get(REQUESTS_ENV, "")
    if chosen:
        return Path(chosen)
    return write_demo_edit_dataset(firm_home() / "demo" / f"edit-{config.demo_size}", n=config.demo_size)


def with_inbox_rows(rows: list[dict], inbox: list[dict]) -> tuple[list[dict], list[Quarantined]]:
    """`rows` then the inbox rows whose request is not already there (same id: same content); a
    repeat is quarantined pointing at its first occurrence, as within one file."""
    first = {row["request_id"]: row for row in rows}
    kept, repeats = list(rows), []
    for row in inbox:
        if row["request_id"] in first:
            earlier = first[row["request_id"]]
            raw = json.dumps({"prompt": row["instruction"], "image": row["image"]}, ensure_ascii=False)
            reason = f"duplicate of {earlier['source']} line {earlier['line']}"
            repeats.append(quarantined(Path(row["source"]), f"line {row['line']}", raw, reason))
            continue
        first[row["request_id"]] = row
        kept.append(row)
    return kept, repeats


@asset(
    group_name=GROUP,
    code_version="edit_importer@1",
    kinds={"duckdb"},
    description="Edit requests (instruction, requirement, source image path, pre-edited images) "
    "imported from FIRM-style JSONL, then those imported from the edit inbox; bad lines and repeats "
    "are quarantined with a reason.",
)
def edit_requests(
    context: AssetExecutionContext, config: EditRequestsConfig, warehouse: WarehouseResource
) -> Output[pl.DataFrame]:
    """The editing requests (source image and instruction) that the chain curates."""
    wh = warehouse.get()
    path = requests_file(config)
    root = Path(config.images_root) if config.images_root else path.parent
    requests, bad = read_edit_requests(path)
    configured = [
        {
            "request_id": r.request_id,
            "instruction": r.instruction,
            "requirement": r.requirement,
            "image": r.image,
            "edited_images": list(r.edited_images),
            "images_root": str(root.resolve()),
            "source": r.source,
            "line": r.line,
        }
        for r in requests
    ]
    from_inbox, files = inbox_edit_rows(wh)
    rows, repeats = with_inbox_rows(configured, from_inbox)
    bad += repeats
    count = record_quarantine(wh, "edit_requests", [q.as_row() for q in bad], context.run_id)
    located = [{**row, "locator": f"line {row['line']}"} for row in rows]
    flags = score_text_flags(located, ("instruction", "requirement"))
    record_input_flags(wh, "edit_requests", SCORE_TEXT_FLAG, flags, context.run_id)
    if flags:
        context.log.warning(f"{len(flags)} request text(s) hold score-shaped text; see input_flags")
    fed = sorted({row["file"] for row in rows if "file" in row})  # only inbox rows name a file
    frame = pl.DataFrame(rows, schema=REQUEST_SCHEMA)
    if bad:
        context.log.warning(f"{len(bad)} request(s) quarantined; see the quarantine table")
    # Where a request sits in its file is not part of it: moving lines leaves the version alone.
    version = frame_version(frame.drop("source", "line"), "request_id")
    return Output(
        frame,
        data_version=DataVersion(version),
        metadata={
            "rows": frame.height,
            "quarantined": count,
            SCORE_TEXT_FLAG: len(flags),
            f"{SCORE_TEXT_FLAG}_examples": MetadataValue.json([list(flag) for flag in flags[:5]]),
            "source": str(path),
            "inbox_files": json.dumps({name: files[name] for name in fed}),
            "data_version": version,
        },
    )


@asset(
    automation_condition=CURATION_CONDITION,
    group_name=GROUP,
    code_version="image_ingest@2",
    kinds={"duckdb"},
    description="Source and imported edited images, validated (format, size, truncation, decompression "
    "bombs, paths escaping the root) and stored by content hash.",
)
def source_images(
    context: AssetExecutionContext, edit_requests: pl.DataFrame, warehouse: WarehouseResource
) -> Output[pl.DataFrame]:
    """The requests' source images, checked and stored once by content hash."""
    store = firm_home() / "images"
    rows, stored, bad = [], [], []
    for request in edit_requests.iter_rows(named=True):
        root = Path(request["images_root"])
        file, line = request["source"], f"line {request['line']}"
        source = attempt(_ingest, root, request["image"], store)
        if isinstance(source, BadLine):
            bad.append((file, f"{line}: image", request["image"], f"source image: {source.reason}"))
            continue
        stored.append(source)
        edits = []
        for index, relative in enumerate(request["edited_images"]):
            edit = attempt(_ingest, root, relative, store)
            if isinstance(edit, BadLine):
                locator = f"{line}: edited_images[{index}]"
                bad.append((file, locator, relative, f"edited image: {edit.reason}"))
            else:
                edits.append(edit)
        stored.extend(edits)
        rows.append(
            {
                "request_id": request["request_id"],
                "instruction": request["instruction"],
                "requirement": request["requirement"],
                "source_sha": source.sha256,
                "source_path": str(source.path),
                "width": source.width,
                "height": source.height,
                "imported_edit_shas": [e.sha256 for e in edits],
                "imported_edit_paths": [str(e.path) for e in edits],
            }
        )
    wh = warehouse.get()
    record_images(wh, stored)
    quarantined = record_quarantine(wh, "source_images", bad, context.run_id)
    frame = pl.DataFrame(rows, schema=SOURCE_SCHEMA)
    version = frame_version(frame.drop("source_path", "imported_edit_paths"), "request_id")
    return Output(
        frame,
        data_version=DataVersion(version),
        metadata={"rows": frame.height, "quarantined": quarantined, "data_version": version},
    )


def _ingest(root: Path, relative: str, store: Path) -> StoredImage:
    """One image of a request, its rejection as the unit's `BadLine` (`attempt` turns any other
    error into one too)."""
    try:
        return ingest_image(resolve_under(root, relative), store)
    except ImageRejected as rejected:
        raise BadLine(rejected.reason) from None
