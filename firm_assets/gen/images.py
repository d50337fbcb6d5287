"""`generated_images`: every configured text-to-image generator x seed, per prompt, content-hashed.

Images depend on the prompts only, so re-planning checklists never re-renders an image.
"""

import polars as pl
from dagster import AssetExecutionContext, Output

from firm_assets.curation.generation import Owner
from firm_assets.curation.stage_asset import StageRun, curation_asset
from resources.models import ModelsResource
from resources.warehouse_resource import WarehouseResource

GROUP = "gen"
PROMPT_TEMPLATE = "t2i_prompt@1"

IMAGE_SCHEMA = {
    "image_id": pl.String,
    "prompt_id": pl.String,
    "generator": pl.String,
    "generator_revision": pl.String,
    "seed": pl.Int64,
    "steps": pl.Int64,
    "guidance": pl.Float64,
    "image_sha": pl.String,
    "image_path": pl.String,
    "cache_key": pl.String,
}


@curation_asset(GROUP, code_version=f"{PROMPT_TEMPLATE}+generated@1", kinds={"duckdb", "diffusers"})
def generated_images(
    context: AssetExecutionContext,
    gen_prompts: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
) -> Output[pl.DataFrame]:
    """The images the judge scores: per prompt, each generator config (diffusers) x seed, with model
    id, revision, seed, steps and guidance."""
    stage_run = StageRun.start(context, models, warehouse)
    owners = [Owner(row["prompt_id"], row["prompt"]) for row in gen_prompts.iter_rows(named=True)]
    rendered, metadata = stage_run.render(
        "generated_images", PROMPT_TEMPLATE, stage_run.profile.generators, owners
    )
    rows = [
        {
            "image_id": r.image_id,
            "prompt_id": r.owner_id,
            "generator": r.config.model,
            "generator_revision": r.revision,
            "seed": r.seed,
            "steps": r.config.steps,
            "guidance": r.config.guidance,
            "image_sha": r.image_sha,
            "image_path": r.image_path,
            "cache_key": r.cache_key,
        }
        for r in rendered
    ]
    frame = pl.DataFrame(rows, schema=IMAGE_SCHEMA).sort("image_id")
    return stage_run.output(frame, metadata, hashed=frame.drop("image_path"))
