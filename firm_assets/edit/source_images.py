"""`source_images`: each edit request's source and imported edited images, validated and stored by
content hash. Any error while reading one image becomes a quarantine row naming the request file and
line: a corrupt image quarantines one request, never the run.
"""

from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, Output

from firm_assets.curation.images import ImageRejected, StoredImage, ingest_image, resolve_under
from firm_assets.curation.lines import BadLine, attempt
from firm_assets.curation.records import record_images, record_quarantine
from firm_assets.curation.stage_asset import curation_asset, versioned_output
from firm_assets.curation.versioning import frame_version
from resources.home import firm_home
from resources.warehouse_resource import WarehouseResource

GROUP = "edit"

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


@curation_asset(GROUP, code_version="image_ingest@2", kinds={"duckdb"})
def source_images(
    context: AssetExecutionContext, edit_requests: pl.DataFrame, warehouse: WarehouseResource
) -> Output[pl.DataFrame]:
    """The requests' source and imported edited images, validated (format, size, truncation,
    decompression bombs, paths escaping the root) and stored once by content hash."""
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
    return versioned_output(frame, version, {"quarantined": quarantined})


def _ingest(root: Path, relative: str, store: Path) -> StoredImage:
    """One image of a request, its rejection as the unit's `BadLine` (`attempt` turns any other
    error into one too)."""
    try:
        return ingest_image(resolve_under(root, relative), store)
    except ImageRejected as rejected:
        raise BadLine(rejected.reason) from None
