"""What the curation assets of both chains share: how a stage is declared (automation, pool, group)
and how an asset returns its frame (content-hashed; a stage's cost recorded against that version)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl
from dagster import AssetExecutionContext, DataVersion, Output, asset

from firm_assets.automation import CURATION_CONDITION, GPU_POOL
from firm_assets.curation.costs import CostMeter
from firm_assets.curation.versioning import frame_version
from resources.warehouse_resource import WarehouseResource


def curation_asset(group: str, *, loads_model: bool, **spec: Any) -> Callable:
    """`@asset` for a curation stage: it updates once its checked upstreams did (CURATION_CONDITION)
    and, when it loads a model, runs in the GPU pool; `spec` is the rest of the asset's own spec."""
    return asset(
        automation_condition=CURATION_CONDITION,
        pool=GPU_POOL if loads_model else None,
        group_name=group,
        **spec,
    )


def stage_output(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    meter: CostMeter,
    frame: pl.DataFrame,
    metadata: dict[str, Any],
    hashed: pl.DataFrame | None = None,
) -> Output[pl.DataFrame]:
    """The stage's frame as its output: its DataVersion is the hash of `hashed` (the frame itself
    unless told: image paths, for one, are where a file sits, not what it is), the meter's cost is
    recorded against that version, and the metadata gains the row count and the version."""
    version = frame_version(frame if hashed is None else hashed)
    meter.record(context, warehouse.get(), version)
    return versioned_output(frame, version, metadata)


def versioned_output(frame: pl.DataFrame, version: str, metadata: dict[str, Any]) -> Output[pl.DataFrame]:
    """An asset's frame as its output: `version` is its DataVersion (what keeps unchanged downstream
    assets fresh), and the metadata gains the row count and the version."""
    return Output(
        frame,
        data_version=DataVersion(version),
        metadata={**metadata, "rows": frame.height, "data_version": version},
    )
