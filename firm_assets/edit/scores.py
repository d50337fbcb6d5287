"""`edit_scores`: execution and consistency, 1-5 with reasoning, from instruction + difference caption.

Execution asks "did the requested change happen?", consistency "did anything else change?"; both
read the difference caption, so the judge scores observed differences rather than its impression.
"""

from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, Output

from firm_assets.curation.canary import canary_metadata
from firm_assets.curation.parsers import CONSISTENCY_JSON, EXECUTION_JSON, score_json_parser
from firm_assets.curation.prompts import load_template
from firm_assets.curation.roles import chat_stage, static_code_version
from firm_assets.curation.stage import StageInput
from firm_assets.curation.stage_asset import StageRun, curation_asset
from resources.chat import ImagePart
from resources.models import ModelsResource
from resources.warehouse_resource import WarehouseResource

GROUP = "edit"
DIMENSIONS = ("execution", "consistency")
TEMPLATES = {dimension: f"{dimension}_score" for dimension in DIMENSIONS}
NO_REQUIREMENT = "none"
CODE_VERSION = static_code_version(
    *(load_template(t).ref for t in TEMPLATES.values()), EXECUTION_JSON.ref, CONSISTENCY_JSON.ref
)

SCORE_SCHEMA = {
    "candidate_id": pl.String,
    "request_id": pl.String,
    **{
        f"{dimension}_{field}": dtype
        for dimension in DIMENSIONS
        for field, dtype in (
            ("score", pl.Float64),
            ("text_score", pl.Int64),
            ("reasoning", pl.String),
            ("key", pl.String),
            ("failure", pl.String),
        )
    },
}


def score_inputs(
    source_images: pl.DataFrame, edit_candidates: pl.DataFrame, difference_captions: pl.DataFrame
) -> list[StageInput]:
    """Candidates whose difference caption succeeded, with instruction, requirement and images."""
    requests = {row["request_id"]: row for row in source_images.iter_rows(named=True)}
    candidates = {row["candidate_id"]: row for row in edit_candidates.iter_rows(named=True)}
    inputs = []
    for caption in difference_captions.filter(pl.col("caption").is_not_null()).iter_rows(named=True):
        candidate = candidates.get(caption["candidate_id"])
        request = requests.get(caption["request_id"])
        if candidate is None or request is None:
            continue
        variables = {
            "instruction": request["instruction"],
            "requirement": request["requirement"] or NO_REQUIREMENT,
            "difference_caption": caption["caption"],
        }
        images = {
            "source": ImagePart(Path(request["source_path"]), request["source_sha"]),
            "edited": ImagePart(Path(candidate["image_path"]), candidate["image_sha"]),
        }
        inputs.append(StageInput(caption["candidate_id"], variables, images))
    return inputs


@curation_asset(GROUP, code_version=CODE_VERSION, kinds={"duckdb", "transformers"})
def edit_scores(
    context: AssetExecutionContext,
    source_images: pl.DataFrame,
    edit_candidates: pl.DataFrame,
    difference_captions: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
) -> Output[pl.DataFrame]:
    """The judge's execution and consistency scores (1-5, with reasoning) of every edit candidate
    (judge role); an unparseable answer is a recorded failure, never a number."""
    stage_run = StageRun.start(context, models, warehouse)
    inputs = score_inputs(source_images, edit_candidates, difference_captions)
    request_of = {sample.sample_id: sample for sample in inputs}
    rows = {
        sample_id: {"candidate_id": sample_id, "request_id": caption_request}
        for sample_id, caption_request in zip(
            difference_captions["candidate_id"], difference_captions["request_id"], strict=True
        )
        if sample_id in request_of
    }
    metadata: dict[str, float | int] = {}
    canary_keys, canary_stats = set(), []
    for dimension, template in TEMPLATES.items():
        parser = score_json_parser(dimension)
        stage = chat_stage(stage_run.profile, f"{dimension}_scores", template, parser, "score", scored=True)
        results, stats = stage_run.chat(stage, "judge", inputs)
        keys, canary = stage_run.canary("edit", stage, "judge", inputs)
        canary_keys |= keys
        canary_stats.append(canary)
        metadata.update({f"{dimension}_{key}": value for key, value in stats.as_metadata().items()})
        for sample_id, result in results.items():
            parsed = result.outcome.parsed or {}
            rows[sample_id].update(
                {
                    f"{dimension}_score": parsed.get("score") if result.outcome.ok else None,
                    f"{dimension}_text_score": parsed.get("text_score", parsed.get("score")),
                    f"{dimension}_reasoning": parsed.get("reasoning"),
                    f"{dimension}_key": result.cache_key,
                    f"{dimension}_failure": result.outcome.failure,
                }
            )
    frame = pl.DataFrame(list(rows.values()), schema=SCORE_SCHEMA).sort("candidate_id")
    metadata.update(canary_metadata("edit", canary_keys, canary_stats))
    return stage_run.output(frame, metadata)
