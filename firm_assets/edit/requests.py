"""`edit_requests`: import FIRM-style JSONL (the configured file, then the requests imported from the
edit inbox); `source_images.py` validates and stores their images.

Two assets so that a fixed typo in one line re-validates no images, and a corrupt image quarantines
one request, never the run.
"""

import json
import os
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, Config, Output, asset
from pydantic import Field

from firm_assets.curation.lines import Quarantined, quarantined
from firm_assets.curation.records import flag_score_text, record_quarantine
from firm_assets.curation.stage_asset import versioned_output
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


@asset(group_name=GROUP, code_version="edit_importer@1", kinds={"duckdb"})
def edit_requests(
    context: AssetExecutionContext, config: EditRequestsConfig, warehouse: WarehouseResource
) -> Output[pl.DataFrame]:
    """The editing requests that the chain curates (instruction, requirement, source image path,
    pre-edited images): imported from FIRM-style JSONL, then from the edit inbox; bad lines and
    repeats are quarantined with a reason."""
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
    flagged = flag_score_text(context, wh, located, ("instruction", "requirement"), "request text(s)")
    fed = sorted({row["file"] for row in rows if "file" in row})  # only inbox rows name a file
    frame = pl.DataFrame(rows, schema=REQUEST_SCHEMA)
    if bad:
        context.log.warning(f"{len(bad)} request(s) quarantined; see the quarantine table")
    # Where a request sits in its file is not part of it: moving lines leaves the version alone.
    version = frame_version(frame.drop("source", "line"), "request_id")
    return versioned_output(
        frame,
        version,
        {
            "quarantined": count,
            **flagged,
            "source": str(path),
            "inbox_files": json.dumps({name: files[name] for name in fed}),
        },
    )
