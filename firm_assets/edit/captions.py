"""`difference_captions`: a VLM describes what differs between source and edited image, no judging.

Grounding the later scores in an explicit difference description is what cuts hallucination.
"""

from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, Output

from firm_assets.curation.parsers import CAPTION_TEXT
from firm_assets.curation.prompts import load_template
from firm_assets.curation.roles import chat_stage, static_code_version
from firm_assets.curation.stage import StageInput
from firm_assets.curation.stage_asset import StageRun, curation_asset
from resources.chat import ImagePart
from resources.models import ModelsResource
from resources.warehouse_resource import WarehouseResource

GROUP = "edit"
TEMPLATE = "difference_caption"
CODE_VERSION = static_code_version(load_template(TEMPLATE).ref, CAPTION_TEXT.ref)

CAPTION_SCHEMA = {
    "candidate_id": pl.String,
    "request_id": pl.String,
    "caption": pl.String,
    "caption_key": pl.String,
    "failure": pl.String,
}


def caption_inputs(source_images: pl.DataFrame, edit_candidates: pl.DataFrame) -> list[StageInput]:
    """One stage input per candidate: its request's source image and the edited image."""
    sources = {row["request_id"]: row for row in source_images.iter_rows(named=True)}
    inputs = []
    for candidate in edit_candidates.iter_rows(named=True):
        source = sources.get(candidate["request_id"])
        if source is None:
            continue
        images = {
            "source": ImagePart(Path(source["source_path"]), source["source_sha"]),
            "edited": ImagePart(Path(candidate["image_path"]), candidate["image_sha"]),
        }
        inputs.append(StageInput(candidate["candidate_id"], {}, images))
    return inputs


@curation_asset(GROUP, code_version=CODE_VERSION, kinds={"duckdb", "transformers"})
def difference_captions(
    context: AssetExecutionContext,
    source_images: pl.DataFrame,
    edit_candidates: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
) -> Output[pl.DataFrame]:
    """What changed between source and edited image, which the judge reads: a plain description of
    every visual difference (captioner role), no judging."""
    stage_run = StageRun.start(context, models, warehouse)
    stage = chat_stage(
        stage_run.profile, "difference_captions", TEMPLATE, CAPTION_TEXT, "caption", scored=False
    )
    results, stats = stage_run.chat(stage, "captioner", caption_inputs(source_images, edit_candidates))
    request_of = dict(zip(edit_candidates["candidate_id"], edit_candidates["request_id"], strict=True))
    frame = pl.DataFrame(
        [
            {
                "candidate_id": sample_id,
                "request_id": request_of[sample_id],
                "caption": result.outcome.parsed["caption"] if result.outcome.ok else None,
                "caption_key": result.cache_key,
                "failure": result.outcome.failure,
            }
            for sample_id, result in results.items()
        ],
        schema=CAPTION_SCHEMA,
    ).sort("candidate_id")
    return stage_run.output(frame, stats.as_metadata())
