"""`firm_gen_dataset`: the versioned, content-hashed scored generation dataset and its exports."""

import polars as pl
from dagster import AssetExecutionContext, Config, Output
from pydantic import Field

from firm_assets.curation.dataset import (
    SftTask,
    balance_by_bin,
    plan_then_score_target,
    quality_target,
)
from firm_assets.curation.parsers import PLAN_THEN_SCORE
from firm_assets.curation.publishing import publish_output
from firm_assets.curation.stage_asset import curation_asset
from resources.tracking import TrackingResource
from resources.warehouse_resource import WarehouseResource

GROUP = "gen"
DATASET = "firm_gen"
TASKS = (
    SftTask(
        name="gen_instruction",
        template_id="critic_gen_instruction",
        image_columns=("image_path",),
        variable_columns={"prompt": "prompt"},
        target=plan_then_score_target("verdicts", "if_reasoning", "if_score"),
    ),
    SftTask(
        name="gen_quality",
        template_id="critic_gen_quality",
        image_columns=("image_path",),
        variable_columns={},
        target=quality_target("quality_scores", "quality_reasoning"),
    ),
)


class GenDatasetConfig(Config):
    """Filters and balancing applied when the generation training set is assembled."""

    min_verdict_coverage: float = Field(
        default=0.0, description="Drop rows whose judge answered fewer checklist items than this share."
    )
    max_per_bin: int = Field(
        default=0, description="Keep at most this many rows per instruction score (0: all)."
    )
    seed: int = Field(default=42, description="Seed of the stable per-bin selection.")


def assemble(
    gen_prompts: pl.DataFrame,
    gen_checklists: pl.DataFrame,
    generated_images: pl.DataFrame,
    gen_scores: pl.DataFrame,
) -> pl.DataFrame:
    """One row per image with both scores, everything a critic trains on, and its lineage keys."""
    scored = gen_scores.filter(pl.col("if_score").is_not_null() & pl.col("quality_score").is_not_null())
    return (
        scored.join(
            generated_images.select("image_id", "generator", "seed", "image_sha", "image_path", "cache_key"),
            on="image_id",
        )
        .join(gen_checklists.select("prompt_id", "items", "checklist_key"), on="prompt_id")
        .join(gen_prompts.select("prompt_id", "prompt", "tag"), on="prompt_id")
        .select(
            pl.col("image_id").alias("sample_id"),
            "prompt_id",
            pl.col("generator").alias("source"),
            "prompt",
            "tag",
            pl.col("items").alias("checklist"),
            "image_sha",
            "image_path",
            "if_score",
            "if_reasoning",
            "verdicts",
            "verdict_coverage",
            "quality_scores",
            "quality_score",
            "quality_reasoning",
            pl.concat_list("cache_key", "checklist_key", "if_key", "quality_key")
            .list.drop_nulls()
            .alias("cache_keys"),
        )
    )


@curation_asset(GROUP, code_version="gen_dataset@3", kinds={"duckdb", "parquet", "mlflow"})
def firm_gen_dataset(
    context: AssetExecutionContext,
    config: GenDatasetConfig,
    gen_prompts: pl.DataFrame,
    gen_checklists: pl.DataFrame,
    generated_images: pl.DataFrame,
    gen_scores: pl.DataFrame,
    warehouse: WarehouseResource,
    tracking: TrackingResource,
) -> Output[pl.DataFrame]:
    """The curated generation training set the critic learns from, versioned by content: Parquet
    and LLaMA-Factory ShareGPT exports (instruction-following and quality tasks) with their images;
    membership and lineage in the warehouse, digest in MLflow."""
    frame = assemble(gen_prompts, gen_checklists, generated_images, gen_scores)
    frame = frame.filter(pl.col("verdict_coverage") >= config.min_verdict_coverage)
    frame = balance_by_bin(frame, "if_score", config.max_per_bin, config.seed)
    return publish_output(
        context,
        DATASET,
        frame,
        TASKS,
        # the critic's answer layout shapes the exports: a new layout is a new version
        {**config.model_dump(), "instruction_answer": PLAN_THEN_SCORE.ref},
        ("gen_prompts", "gen_checklists", "generated_images", "gen_scores"),
        {"mean_instruction_following": "if_score", "mean_quality": "quality_score"},
        "if_score",
        warehouse,
        tracking,
    )
