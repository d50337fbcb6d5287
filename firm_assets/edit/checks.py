"""Gates on the edit chain: score ranges, failure rates of every model stage and quarantine counts."""

import polars as pl
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetKey, asset_check

from firm_assets.curation.canary import (
    CANARY_KEYS,
    MAX_MEAN_ABS_DELTA,
    MIN_EXACT_AGREEMENT,
    canary_check,
    canary_stage,
)
from firm_assets.curation.gates import (
    MAX_FAILURE_RATE,
    failure_rate,
    materialization_metadata,
    quarantine_rate,
    render_failure_rate,
    scores_in_range,
)
from firm_assets.edit.candidates import edit_candidates
from firm_assets.edit.captions import difference_captions
from firm_assets.edit.dataset import firm_edit_dataset
from firm_assets.edit.requests import edit_requests
from firm_assets.edit.scores import DIMENSIONS, edit_scores
from firm_assets.edit.source_images import source_images
from resources.warehouse_resource import WarehouseResource

SCORE_COLUMNS = [f"{dimension}_score" for dimension in DIMENSIONS]


@asset_check(asset=edit_scores, description="Every score lies in 1-5.", blocking=True)
def edit_scores_in_range(edit_scores: pl.DataFrame) -> AssetCheckResult:
    """Catches a parser or judge that returns scores outside the scale."""
    return scores_in_range(edit_scores, SCORE_COLUMNS)


@asset_check(
    asset=edit_scores, description=f"At most {MAX_FAILURE_RATE:.0%} of scores failed.", blocking=True
)
def edit_scores_failure_rate(edit_scores: pl.DataFrame) -> AssetCheckResult:
    """Stops the chain when too many judge answers failed."""
    return failure_rate(edit_scores, SCORE_COLUMNS)


@asset_check(
    asset=edit_scores,
    description="Judge drift: on the pinned canary, the current judge agrees with the previous one "
    f"(mean |delta| <= {MAX_MEAN_ABS_DELTA}, exact agreement >= {MIN_EXACT_AGREEMENT:.0%}; warn).",
)
def edit_scores_judge_drift(
    context: AssetCheckExecutionContext, edit_scores: pl.DataFrame, warehouse: WarehouseResource
) -> AssetCheckResult:
    """Warns when the judge scores the canary items differently from before."""
    keys = set(materialization_metadata(context, AssetKey("edit_scores")).get(CANARY_KEYS, []))
    stages = [canary_stage(f"{d}_scores") for d in DIMENSIONS]
    return canary_check(warehouse.get(), "edit", stages, set(edit_scores["candidate_id"]), keys)


@asset_check(
    asset=edit_candidates,
    description=f"At most {MAX_FAILURE_RATE:.0%} of edited-image renders failed.",
    blocking=True,
)
def edit_candidates_failure_rate(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """Stops the chain when too many edits failed to render."""
    return render_failure_rate(materialization_metadata(context, AssetKey("edit_candidates")))


@asset_check(
    asset=difference_captions,
    description=f"At most {MAX_FAILURE_RATE:.0%} of difference captions failed.",
    blocking=True,
)
def difference_captions_failure_rate(difference_captions: pl.DataFrame) -> AssetCheckResult:
    """Stops the chain when too many captions failed."""
    return failure_rate(difference_captions, ["caption"])


@asset_check(
    asset=edit_requests, description="Share of request lines quarantined in this run (warn above half)."
)
def edit_requests_quarantine(
    context: AssetCheckExecutionContext, edit_requests: pl.DataFrame, warehouse: WarehouseResource
) -> AssetCheckResult:
    """Flags an import that rejected too many request lines."""
    return quarantine_rate("edit_requests", edit_requests.height, warehouse, context.run.run_id)


@asset_check(asset=source_images, description="Share of images quarantined in this run (warn above half).")
def source_images_quarantine(
    context: AssetCheckExecutionContext, source_images: pl.DataFrame, warehouse: WarehouseResource
) -> AssetCheckResult:
    """Flags an ingest that rejected too many source images."""
    return quarantine_rate("source_images", source_images.height, warehouse, context.run.run_id)


@asset_check(asset=firm_edit_dataset, description="The published dataset has samples.", blocking=True)
def firm_edit_dataset_not_empty(firm_edit_dataset: pl.DataFrame) -> AssetCheckResult:
    """An empty dataset would train nothing: stop before the critic."""
    return AssetCheckResult(passed=firm_edit_dataset.height > 0, metadata={"rows": firm_edit_dataset.height})
