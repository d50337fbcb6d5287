"""`firm_edit_dataset`: the versioned, content-hashed scored edit dataset and its training exports."""

import polars as pl
from dagster import AssetExecutionContext, Config, Output
from pydantic import Field

from firm_assets.curation.dataset import SftTask, balance_by_bin, json_score_target
from firm_assets.curation.publishing import publish_output
from firm_assets.curation.stage_asset import curation_asset
from resources.tracking import TrackingResource
from resources.warehouse_resource import WarehouseResource

GROUP = "edit"
DATASET = "firm_edit"
TASKS = tuple(
    SftTask(
        name=f"edit_{dimension}",
        template_id=f"critic_edit_{dimension}",
        image_columns=("source_path", "edited_path"),
        variable_columns={"instruction": "instruction", "requirement": "requirement"},
        target=json_score_target(f"{dimension}_reasoning", f"{dimension}_score"),
    )
    for dimension in ("execution", "consistency")
)


class EditDatasetConfig(Config):
    """Filters applied when the editing training set is assembled."""

    require_text_parse: bool = Field(
        default=False,
        description="Keep only rows whose judge answers parsed as text (not only as expectation).",
    )
    max_per_bin: int = Field(
        default=0, description="Keep at most this many rows per execution score (0: all)."
    )
    seed: int = Field(default=42, description="Seed of the stable per-bin selection.")


def assemble(
    source_images: pl.DataFrame,
    edit_candidates: pl.DataFrame,
    edit_scores: pl.DataFrame,
    difference_captions: pl.DataFrame,
) -> pl.DataFrame:
    """One row per fully scored candidate, with everything a critic trains on and its lineage keys."""
    scored = edit_scores.filter(
        pl.col("execution_score").is_not_null() & pl.col("consistency_score").is_not_null()
    )
    return (
        scored.join(
            edit_candidates.select("candidate_id", "editor", "seed", "image_sha", "image_path", "cache_key"),
            on="candidate_id",
        )
        .join(difference_captions.select("candidate_id", "caption", "caption_key"), on="candidate_id")
        .join(
            source_images.select("request_id", "instruction", "requirement", "source_sha", "source_path"),
            on="request_id",
        )
        .select(
            pl.col("candidate_id").alias("sample_id"),
            "request_id",
            pl.col("editor").alias("source"),
            "instruction",
            "requirement",
            "source_sha",
            "source_path",
            pl.col("image_sha").alias("edited_sha"),
            pl.col("image_path").alias("edited_path"),
            "caption",
            "execution_score",
            "execution_text_score",
            "execution_reasoning",
            "consistency_score",
            "consistency_text_score",
            "consistency_reasoning",
            pl.concat_list("cache_key", "caption_key", "execution_key", "consistency_key")
            .list.drop_nulls()
            .alias("cache_keys"),
        )
    )


@curation_asset(GROUP, code_version="edit_dataset@2", kinds={"duckdb", "parquet", "mlflow"})
def firm_edit_dataset(
    context: AssetExecutionContext,
    config: EditDatasetConfig,
    source_images: pl.DataFrame,
    edit_candidates: pl.DataFrame,
    difference_captions: pl.DataFrame,
    edit_scores: pl.DataFrame,
    warehouse: WarehouseResource,
    tracking: TrackingResource,
) -> Output[pl.DataFrame]:
    """The curated editing training set the critic learns from, versioned by content: Parquet and
    LLaMA-Factory ShareGPT exports (execution and consistency tasks) with their images; membership and
    lineage in the warehouse, digest in MLflow."""
    frame = assemble(source_images, edit_candidates, edit_scores, difference_captions)
    if config.require_text_parse:
        frame = frame.filter(
            pl.col("execution_text_score").is_not_null() & pl.col("consistency_text_score").is_not_null()
        )
    frame = balance_by_bin(frame, "execution_score", config.max_per_bin, config.seed)
    return publish_output(
        context,
        DATASET,
        frame,
        TASKS,
        config.model_dump(),
        ("source_images", "edit_candidates", "difference_captions", "edit_scores"),
        {"mean_execution": "execution_score", "mean_consistency": "consistency_score"},
        "execution_score",
        warehouse,
        tracking,
    )
