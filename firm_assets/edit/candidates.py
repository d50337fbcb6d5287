"""`edit_candidates`: the edited images to score — imported ones plus every editor config x seed."""

import polars as pl
from dagster import AssetExecutionContext, Output

from firm_assets.curation.generation import Owner
from firm_assets.curation.stage_asset import StageRun, curation_asset
from firm_assets.curation.versioning import short_hash
from resources.models import ModelsResource
from resources.warehouse_resource import WarehouseResource

GROUP = "edit"
IMPORTED = "imported"
EDIT_TEMPLATE = "edit_instruction@1"

CANDIDATE_SCHEMA = {
    "candidate_id": pl.String,
    "request_id": pl.String,
    "editor": pl.String,
    "editor_revision": pl.String,
    "seed": pl.Int64,
    "image_sha": pl.String,
    "image_path": pl.String,
    "cache_key": pl.String,
}


def _imported(source_images: pl.DataFrame) -> list[dict]:
    return [
        {
            "candidate_id": short_hash(row["request_id"], IMPORTED, sha),
            "request_id": row["request_id"],
            "editor": IMPORTED,
            "editor_revision": "",
            "seed": None,
            "image_sha": sha,
            "image_path": path,
            "cache_key": None,
        }
        for row in source_images.iter_rows(named=True)
        for sha, path in zip(row["imported_edit_shas"], row["imported_edit_paths"], strict=True)
    ]


@curation_asset(GROUP, code_version=f"{EDIT_TEMPLATE}+candidates@1", kinds={"duckdb", "diffusers"})
def edit_candidates(
    context: AssetExecutionContext,
    source_images: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
) -> Output[pl.DataFrame]:
    """The candidates the judge scores: per request, its imported edited images plus each configured
    editor (diffusers) x seed, content-hashed with model id, revision and seed."""
    stage_run = StageRun.start(context, models, warehouse)
    owners = [
        Owner(row["request_id"], row["instruction"], row["source_path"], row["source_sha"])
        for row in source_images.iter_rows(named=True)
    ]
    rendered, metadata = stage_run.render("edit_candidates", EDIT_TEMPLATE, stage_run.profile.editors, owners)
    rows = _imported(source_images) + [
        {
            "candidate_id": r.image_id,
            "request_id": r.owner_id,
            "editor": r.config.model,
            "editor_revision": r.revision,
            "seed": r.seed,
            "image_sha": r.image_sha,
            "image_path": r.image_path,
            "cache_key": r.cache_key,
        }
        for r in rendered
    ]
    metadata["imported"] = len(rows) - len(rendered)
    frame = pl.DataFrame(rows, schema=CANDIDATE_SCHEMA).sort("candidate_id")
    context.log.info(f"edit_candidates: {frame.height} candidates, {metadata}")
    return stage_run.output(frame, metadata, hashed=frame.drop("image_path"))
