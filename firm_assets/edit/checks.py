"""Gates on the edit chain: score ranges, failure rates and quarantine counts."""

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, asset_check

from firm_assets.curation.parsers import SCORE_MAX, SCORE_MIN
from firm_assets.edit.dataset import firm_edit_dataset
from firm_assets.edit.requests import edit_requests, source_images
from firm_assets.edit.scores import DIMENSIONS, edit_scores
from resources.warehouse_resource import WarehouseResource

MAX_FAILURE_RATE = 0.2
MAX_QUARANTINE_RATE = 0.5


@asset_check(asset=edit_scores, description=f"Every score lies in {SCORE_MIN}-{SCORE_MAX}.", blocking=True)
def edit_scores_in_range(edit_scores: pl.DataFrame) -> AssetCheckResult:
    bad = {
        dimension: edit_scores.filter(~pl.col(f"{dimension}_score").is_between(SCORE_MIN, SCORE_MAX)).height
        for dimension in DIMENSIONS
    }
    return AssetCheckResult(
        passed=not any(bad.values()), metadata={f"out_of_range_{k}": v for k, v in bad.items()}
    )


@asset_check(
    asset=edit_scores, description=f"At most {MAX_FAILURE_RATE:.0%} of scores failed.", blocking=True
)
def edit_scores_failure_rate(edit_scores: pl.DataFrame) -> AssetCheckResult:
    rows = max(edit_scores.height, 1)
    rates = {d: edit_scores[f"{d}_score"].null_count() / rows for d in DIMENSIONS}
    return AssetCheckResult(
        passed=all(rate <= MAX_FAILURE_RATE for rate in rates.values()),
        metadata={f"failure_rate_{k}": round(v, 4) for k, v in rates.items()},
    )


def _quarantine_check(
    asset_name: str, produced: int, warehouse: WarehouseResource, run_id: str
) -> AssetCheckResult:
    count = warehouse.get().rows(
        "SELECT count(*) FROM quarantine WHERE asset = ? AND dagster_run_id = ?", [asset_name, run_id]
    )[0][0]
    rate = count / max(count + produced, 1)
    return AssetCheckResult(
        passed=rate <= MAX_QUARANTINE_RATE,
        severity=AssetCheckSeverity.WARN,
        metadata={"quarantined": count, "quarantine_rate": round(rate, 4)},
    )


@asset_check(
    asset=edit_requests, description="Share of request lines quarantined in this run (warn above half)."
)
def edit_requests_quarantine(
    context, edit_requests: pl.DataFrame, warehouse: WarehouseResource
) -> AssetCheckResult:
    return _quarantine_check("edit_requests", edit_requests.height, warehouse, context.run.run_id)


@asset_check(asset=source_images, description="Share of images quarantined in this run (warn above half).")
def source_images_quarantine(
    context, source_images: pl.DataFrame, warehouse: WarehouseResource
) -> AssetCheckResult:
    return _quarantine_check("source_images", source_images.height, warehouse, context.run.run_id)


@asset_check(asset=firm_edit_dataset, description="The published dataset has samples.")
def firm_edit_dataset_not_empty(firm_edit_dataset: pl.DataFrame) -> AssetCheckResult:
    return AssetCheckResult(passed=firm_edit_dataset.height > 0, metadata={"rows": firm_edit_dataset.height})
