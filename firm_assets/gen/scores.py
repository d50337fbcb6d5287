"""`gen_scores`: instruction following checked item by item against the checklist (1-5, per-item
verdicts kept), and prompt-free quality as three 1-5 sub-scores whose minimum is the quality."""

import json
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, Output

from firm_assets.curation.cache import CachedResult
from firm_assets.curation.canary import canary_metadata
from firm_assets.curation.parsers import INSTRUCTION_FOLLOWING, QUALITY_JSON
from firm_assets.curation.prompts import load_template
from firm_assets.curation.roles import chat_stage, static_code_version
from firm_assets.curation.stage import StageInput
from firm_assets.curation.stage_asset import StageRun, curation_asset
from firm_assets.gen.checklists import numbered_checklist
from resources.chat import ImagePart
from resources.models import ModelsResource
from resources.warehouse_resource import WarehouseResource

GROUP = "gen"
IF_TEMPLATE = "gen_instruction_score"
QUALITY_TEMPLATE = "gen_quality_score"
ROWS_VERSION = "gen_scores@2"  # the row layout (verdicts carry their evidence since 2)
CODE_VERSION = static_code_version(
    ROWS_VERSION,
    load_template(IF_TEMPLATE).ref,
    INSTRUCTION_FOLLOWING.ref,
    load_template(QUALITY_TEMPLATE).ref,
    QUALITY_JSON.ref,
)

SCORE_SCHEMA = {
    "image_id": pl.String,
    "prompt_id": pl.String,
    "if_score": pl.Float64,
    "if_reasoning": pl.String,
    # JSON list aligned with the checklist: {"item", "question", "verdict"|null, "evidence"|null}
    "verdicts": pl.String,
    "verdict_coverage": pl.Float64,
    "if_key": pl.String,
    "if_failure": pl.String,
    "quality_scores": pl.List(pl.Int64),
    "quality_score": pl.Float64,
    "quality_reasoning": pl.String,
    "quality_key": pl.String,
    "quality_failure": pl.String,
}


def aligned_verdicts(items_json: str, verdicts: list[dict]) -> list[dict]:
    """One entry per checklist item; the judge's verdict and evidence for it, or None if it skipped
    that item. Verdicts for item numbers the checklist does not have are dropped."""
    by_number = {v["item"]: v for v in verdicts}
    aligned = []
    for i, item in enumerate(json.loads(items_json), start=1):
        given = by_number.get(i, {})
        evidence = given.get("analysis") or None
        aligned.append(
            {"item": i, "question": item["question"], "verdict": given.get("verdict"), "evidence": evidence}
        )
    return aligned


def _if_fields(result: CachedResult, items_json: str) -> dict:
    outcome = result.outcome
    fields = {"if_key": result.cache_key, "if_failure": outcome.failure}
    if not outcome.ok:
        return {**fields, "if_score": None, "if_reasoning": None, "verdicts": None, "verdict_coverage": None}
    verdicts = aligned_verdicts(items_json, outcome.parsed.get("verdicts", []))
    covered = sum(v["verdict"] is not None for v in verdicts) / max(len(verdicts), 1)
    return {
        **fields,
        "if_score": float(outcome.parsed["score"]),
        "if_reasoning": outcome.parsed["reasoning"],
        "verdicts": json.dumps(verdicts),
        "verdict_coverage": covered,
    }


def _quality_fields(result: CachedResult) -> dict:
    parsed = result.outcome.parsed if result.outcome.ok else {}
    return {
        "quality_scores": parsed.get("scores"),
        "quality_score": float(parsed["score"]) if parsed else None,
        "quality_reasoning": parsed.get("reasoning"),
        "quality_key": result.cache_key,
        "quality_failure": result.outcome.failure,
    }


@curation_asset(GROUP, code_version=CODE_VERSION, kinds={"duckdb", "transformers"})
def gen_scores(
    context: AssetExecutionContext,
    gen_prompts: pl.DataFrame,
    gen_checklists: pl.DataFrame,
    generated_images: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
) -> Output[pl.DataFrame]:
    """The judge's scores of every generated image (judge role): checklist verdicts and an
    instruction-following 1-5, and prompt-free quality [aesthetics, technical, structure]; a failure
    is recorded, never a number."""
    stage_run = StageRun.start(context, models, warehouse)
    prompts = dict(zip(gen_prompts["prompt_id"], gen_prompts["prompt"], strict=True))
    checklists = {
        row["prompt_id"]: row["items"]
        for row in gen_checklists.iter_rows(named=True)
        if row["items"] is not None
    }
    images = [row for row in generated_images.iter_rows(named=True) if row["prompt_id"] in checklists]
    parts = {
        row["image_id"]: {"image": ImagePart(Path(row["image_path"]), row["image_sha"])} for row in images
    }
    if_stage = chat_stage(
        stage_run.profile,
        "gen_instruction_following",
        IF_TEMPLATE,
        INSTRUCTION_FOLLOWING,
        "instruction",
        scored=False,
    )
    if_inputs = [
        StageInput(
            row["image_id"],
            {
                "prompt": prompts[row["prompt_id"]],
                "checklist": numbered_checklist(checklists[row["prompt_id"]]),
            },
            parts[row["image_id"]],
        )
        for row in images
    ]
    if_results, if_stats = stage_run.chat(if_stage, "judge", if_inputs)

    quality_stage = chat_stage(
        stage_run.profile, "gen_quality", QUALITY_TEMPLATE, QUALITY_JSON, "quality", scored=False
    )
    quality_inputs = [StageInput(row["image_id"], {}, parts[row["image_id"]]) for row in images]
    quality_results, quality_stats = stage_run.chat(quality_stage, "judge", quality_inputs)
    canary_keys, canary_stats = set(), []
    for stage, stage_inputs in ((if_stage, if_inputs), (quality_stage, quality_inputs)):
        keys, canary = stage_run.canary("gen", stage, "judge", stage_inputs)
        canary_keys |= keys
        canary_stats.append(canary)

    rows = [
        {
            "image_id": row["image_id"],
            "prompt_id": row["prompt_id"],
            **_if_fields(if_results[row["image_id"]], checklists[row["prompt_id"]]),
            **_quality_fields(quality_results[row["image_id"]]),
        }
        for row in images
    ]
    frame = pl.DataFrame(rows, schema=SCORE_SCHEMA).sort("image_id")
    metadata = {f"if_{k}": v for k, v in if_stats.as_metadata().items()}
    metadata.update({f"quality_{k}": v for k, v in quality_stats.as_metadata().items()})
    coverage = frame["verdict_coverage"].drop_nulls()
    metadata["verdict_coverage"] = float(coverage.mean()) if coverage.len() else None
    metadata.update(canary_metadata("gen", canary_keys, canary_stats))
    return stage_run.output(frame, metadata)
