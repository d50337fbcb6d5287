"""Checks both chains use: score ranges, failure rates, quarantine rates, judge drift and a non-empty
dataset, each a body (testable on a frame) and a factory that declares it on an asset."""

from typing import Any

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    AssetsDefinition,
    DagsterEventType,
    asset_check,
)

from firm_assets.curation.canary import (
    CANARY_KEYS,
    MAX_MEAN_ABS_DELTA,
    MIN_EXACT_AGREEMENT,
    canary_check,
    canary_stage,
)
from firm_assets.curation.parsers import SCORE_MAX, SCORE_MIN
from resources.warehouse_resource import WarehouseResource

MAX_FAILURE_RATE = 0.2
MAX_QUARANTINE_RATE = 0.5


def scores_in_range(frame: pl.DataFrame, columns: list[str]) -> AssetCheckResult:
    """Every non-null score lies in 1-5 (list columns: every element)."""
    bad = {}
    for column in columns:
        values = frame[column]
        if values.dtype == pl.List(pl.Int64):
            values = values.explode()
        bad[column] = int((~values.drop_nulls().is_between(SCORE_MIN, SCORE_MAX)).sum())
    return AssetCheckResult(
        passed=not any(bad.values()), metadata={f"out_of_range_{k}": v for k, v in bad.items()}
    )


def failure_rate(
    frame: pl.DataFrame, columns: list[str], max_rate: float = MAX_FAILURE_RATE
) -> AssetCheckResult:
    """Share of rows without a score (a recorded failure) per column, at most max_rate."""
    rows = max(frame.height, 1)
    rates = {column: frame[column].null_count() / rows for column in columns}
    return AssetCheckResult(
        passed=all(rate <= max_rate for rate in rates.values()),
        metadata={f"failure_rate_{k}": round(v, 4) for k, v in rates.items()},
    )


def render_failure_rate(metadata: dict[str, Any], max_rate: float = MAX_FAILURE_RATE) -> AssetCheckResult:
    """Share of an image stage's renders that failed, at most max_rate. Failed renders are left out of
    the asset's rows, so the counts come from its materialization metadata (`failures`, `renders`)."""
    failures, renders = int(metadata.get("failures", 0)), int(metadata.get("renders", 0))
    rate = failures / renders if renders else 0.0
    return AssetCheckResult(
        passed=rate <= max_rate,
        metadata={
            "renders": renders,
            "failures": failures,
            "transient_failures": int(metadata.get("transient_failures", 0)),
            "failure_rate": round(rate, 4),
        },
    )


def materialization_metadata(context: AssetCheckExecutionContext, asset: AssetKey) -> dict[str, Any]:
    """The metadata values of the asset's materialization in this run (a check runs after its asset),
    else of its latest one (a check run on its own)."""
    events = context.instance.all_logs(context.run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    ours = [event for event in events if event.asset_materialization.asset_key == asset]
    event = ours[-1] if ours else context.instance.get_latest_materialization_event(asset)
    if event is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def quarantine_rate(
    asset_name: str, produced: int, warehouse: WarehouseResource, run_id: str
) -> AssetCheckResult:
    """Warn when more than half of an asset's inputs were quarantined in this run."""
    count = warehouse.get().rows(
        "SELECT count(*) FROM quarantine WHERE asset = ? AND dagster_run_id = ?", [asset_name, run_id]
    )[0][0]
    rate = count / max(count + produced, 1)
    return AssetCheckResult(
        passed=rate <= MAX_QUARANTINE_RATE,
        severity=AssetCheckSeverity.WARN,
        metadata={"quarantined": count, "quarantine_rate": round(rate, 4)},
    )


def scores_in_range_check(
    asset: AssetsDefinition, columns: list[str], description: str
) -> AssetChecksDefinition:
    """`<asset>_in_range` (blocking): catches a parser or judge that returns scores outside the scale."""

    @asset_check(asset=asset, name=f"{asset.key.path[-1]}_in_range", description=description, blocking=True)
    def _check(frame: pl.DataFrame) -> AssetCheckResult:
        return scores_in_range(frame, columns)

    return _check


def failure_rate_check(asset: AssetsDefinition, columns: list[str], what: str) -> AssetChecksDefinition:
    """`<asset>_failure_rate` (blocking): stops the chain when too many of a model stage's answers, the
    `what` of its description, failed (a null in `columns`)."""

    @asset_check(
        asset=asset,
        name=f"{asset.key.path[-1]}_failure_rate",
        description=f"At most {MAX_FAILURE_RATE:.0%} of {what} failed.",
        blocking=True,
    )
    def _check(frame: pl.DataFrame) -> AssetCheckResult:
        return failure_rate(frame, columns)

    return _check


def render_failure_check(asset: AssetsDefinition, what: str) -> AssetChecksDefinition:
    """`<asset>_failure_rate` of an image stage (blocking): stops the chain when too many renders failed."""

    @asset_check(
        asset=asset,
        name=f"{asset.key.path[-1]}_failure_rate",
        description=f"At most {MAX_FAILURE_RATE:.0%} of {what} failed.",
        blocking=True,
    )
    def _check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        return render_failure_rate(materialization_metadata(context, asset.key))

    return _check


def quarantine_check(asset: AssetsDefinition, what: str) -> AssetChecksDefinition:
    """`<asset>_quarantine` (warn): flags an import that rejected too many of its inputs (`what`)."""
    name = asset.key.path[-1]

    @asset_check(
        asset=asset,
        name=f"{name}_quarantine",
        description=f"Share of {what} quarantined in this run (warn above half).",
    )
    def _check(
        context: AssetCheckExecutionContext, frame: pl.DataFrame, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        return quarantine_rate(name, frame.height, warehouse, context.run.run_id)

    return _check


def not_empty_check(dataset: AssetsDefinition) -> AssetChecksDefinition:
    """`<dataset>_not_empty` (blocking): an empty dataset would train nothing, so stop before the critic."""

    @asset_check(
        asset=dataset,
        name=f"{dataset.key.path[-1]}_not_empty",
        description="The published dataset has samples.",
        blocking=True,
    )
    def _check(frame: pl.DataFrame) -> AssetCheckResult:
        return AssetCheckResult(passed=frame.height > 0, metadata={"rows": frame.height})

    return _check


def judge_drift_check(
    asset: AssetsDefinition, side: str, stages: list[str], id_column: str
) -> AssetChecksDefinition:
    """`<asset>_judge_drift` (warn) on a score asset: `canary_check` over the canary of its `stages`,
    its items read from `id_column`, its canary answers' keys from its materialization metadata."""

    @asset_check(
        asset=asset,
        name=f"{asset.key.path[-1]}_judge_drift",
        description="Judge drift: on the pinned canary, the current judge agrees with the previous one "
        f"(mean |delta| <= {MAX_MEAN_ABS_DELTA}, exact agreement >= {MIN_EXACT_AGREEMENT:.0%}; warn).",
    )
    def _check(
        context: AssetCheckExecutionContext, frame: pl.DataFrame, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        keys = set(materialization_metadata(context, asset.key).get(CANARY_KEYS, []))
        canary_stages = [canary_stage(stage) for stage in stages]
        return canary_check(warehouse.get(), side, canary_stages, set(frame[id_column]), keys)

    return _check
