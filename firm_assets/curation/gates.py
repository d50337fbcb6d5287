"""Check bodies both chains use: score ranges, failure rates and quarantine rates."""

from typing import Any

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
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
