"""What the curation assets of both chains share: how a stage is declared (automation, pool, group),
how a stage's model calls reach the cache (`StageRun`), and how an asset returns its frame
(content-hashed; a stage's cost recorded against that version)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from dagster import AssetExecutionContext, DataVersion, Output, asset

from firm_assets.automation import CURATION_CONDITION, GPU_POOL
from firm_assets.curation.cache import CachedResult, StageStats
from firm_assets.curation.canary import score_canary
from firm_assets.curation.costs import CostMeter
from firm_assets.curation.generation import Owner, Rendered, render_for_all
from firm_assets.curation.stage import ChatStage, StageInput, run_chat_stage
from firm_assets.curation.versioning import frame_version
from resources.chat import ChatBackend
from resources.models import ModelsResource
from resources.profiles import ImageModelConfig, Profile
from resources.warehouse_resource import WarehouseResource
from warehouse.connection import Warehouse

MODEL_KINDS = frozenset({"transformers", "diffusers"})  # a stage of these kinds loads a model


def curation_asset(group: str, *, code_version: str, kinds: set[str], **spec: Any) -> Callable:
    """`@asset` for a curation stage: it updates once its checked upstreams did (CURATION_CONDITION)
    and, when its kinds name a model library, runs in the GPU pool. The function's docstring is the
    asset's description; `spec` is the rest of the asset's own spec."""
    return asset(
        automation_condition=CURATION_CONDITION,
        pool=GPU_POOL if kinds & MODEL_KINDS else None,
        group_name=group,
        code_version=code_version,
        kinds=kinds,
        **spec,
    )


@dataclass
class StageRun:
    """One materialization of a model-calling curation stage. It holds what every model call of the
    stage is made with (the profile, the warehouse that caches the answers, the Dagster run) and the
    meter each call's cost goes to, so a stage's body says only what it asks and what it keeps."""

    context: AssetExecutionContext
    models: ModelsResource
    warehouse: Warehouse
    profile: Profile
    meter: CostMeter

    @classmethod
    def start(
        cls, context: AssetExecutionContext, models: ModelsResource, warehouse: WarehouseResource
    ) -> StageRun:
        """Open the stage as its asset's body starts: the meter first, so the cost counts from here."""
        meter = CostMeter()
        return cls(context, models, warehouse.get(), models.settings(), meter)

    def chat(
        self, stage: ChatStage, role: str, inputs: Sequence[StageInput]
    ) -> tuple[dict[str, CachedResult], StageStats]:
        """Every input through `stage` with `role`'s chat model (its batch size), cost metered."""
        backend, batch_size = self._role(role)
        results, stats = run_chat_stage(
            stage, backend, inputs, self.warehouse, batch_size, self.context.run_id
        )
        return results, self.meter.add(stats)

    def canary(
        self, side: str, stage: ChatStage, role: str, inputs: Sequence[StageInput]
    ) -> tuple[set[str], StageStats]:
        """The judge-drift canary of a score stage (`canary.score_canary`), cost metered."""
        backend, batch_size = self._role(role)
        keys, stats = score_canary(
            side, stage, backend, inputs, self.warehouse, batch_size, self.context.run_id
        )
        return keys, self.meter.add(stats)

    def _role(self, role: str) -> tuple[ChatBackend, int]:
        """A chat role's backend (`models.chat` refuses an unknown role) and its batch size."""
        backend = self.models.chat(role)
        return backend, getattr(self.profile, role).batch_size

    def render(
        self, stage: str, template_ref: str, configs: Sequence[ImageModelConfig], owners: Sequence[Owner]
    ) -> tuple[list[Rendered], dict[str, float]]:
        """Every image config x the profile's seeds for every owner (`generation.render_for_all`),
        cost metered."""
        return render_for_all(
            stage,
            template_ref,
            configs,
            self.profile.seeds,
            owners,
            self.models,
            self.warehouse,
            self.context.run_id,
            self.meter,
        )

    def output(
        self, frame: pl.DataFrame, metadata: dict[str, Any], hashed: pl.DataFrame | None = None
    ) -> Output[pl.DataFrame]:
        """The stage's frame as its output: its DataVersion is the hash of `hashed` (the frame itself
        unless told: image paths, for one, are where a file sits, not what it is), the meter's cost
        is recorded against that version, and the metadata gains the row count and the version."""
        version = frame_version(frame if hashed is None else hashed)
        self.meter.record(self.context, self.warehouse, version)
        return versioned_output(frame, version, metadata)


def versioned_output(frame: pl.DataFrame, version: str, metadata: dict[str, Any]) -> Output[pl.DataFrame]:
    """An asset's frame as its output: `version` is its DataVersion (what keeps unchanged downstream
    assets fresh), and the metadata gains the row count and the version."""
    return Output(
        frame,
        data_version=DataVersion(version),
        metadata={**metadata, "rows": frame.height, "data_version": version},
    )
