"""Gates on the gen chain: score ranges, failure rates of every model stage, checklist sizes and
GenEval coverage."""

import polars as pl
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetKey, asset_check

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
from firm_assets.curation.parsers import MAX_CHECKLIST_ITEMS
from firm_assets.gen.checklists import gen_checklists
from firm_assets.gen.dataset import firm_gen_dataset
from firm_assets.gen.images import generated_images
from firm_assets.gen.prompts import gen_prompts
from firm_assets.gen.scores import gen_scores
from resources.warehouse_resource import WarehouseResource

MIN_GENEVAL_COVERAGE = 0.5


@asset_check(
    asset=gen_scores, description="Instruction-following and quality scores lie in 1-5.", blocking=True
)
def gen_scores_in_range(gen_scores: pl.DataFrame) -> AssetCheckResult:
    """Catches a parser or judge that returns scores outside the scale."""
    return scores_in_range(gen_scores, ["if_score", "quality_score", "quality_scores"])


@asset_check(asset=gen_scores, description=f"At most {MAX_FAILURE_RATE:.0%} of scores failed.", blocking=True)
def gen_scores_failure_rate(gen_scores: pl.DataFrame) -> AssetCheckResult:
    """Stops the chain when too many judge answers failed."""
    return failure_rate(gen_scores, ["if_score", "quality_score"])


@asset_check(
    asset=gen_scores,
    description="Judge drift: on the pinned canary, the current judge agrees with the previous one "
    f"(mean |delta| <= {MAX_MEAN_ABS_DELTA}, exact agreement >= {MIN_EXACT_AGREEMENT:.0%}; warn).",
)
def gen_scores_judge_drift(
    context: AssetCheckExecutionContext, gen_scores: pl.DataFrame, warehouse: WarehouseResource
) -> AssetCheckResult:
    """Warns when the judge scores the canary items differently from before."""
    keys = set(materialization_metadata(context, AssetKey("gen_scores")).get(CANARY_KEYS, []))
    stages = [canary_stage(stage) for stage in ("gen_instruction_following", "gen_quality")]
    return canary_check(warehouse.get(), "gen", stages, set(gen_scores["image_id"]), keys)


@asset_check(
    asset=gen_checklists, description=f"At most {MAX_FAILURE_RATE:.0%} of plans failed.", blocking=True
)
def gen_checklists_failure_rate(gen_checklists: pl.DataFrame) -> AssetCheckResult:
    """Stops the chain when too many checklists failed."""
    return failure_rate(gen_checklists, ["items"])


@asset_check(
    asset=generated_images,
    description=f"At most {MAX_FAILURE_RATE:.0%} of image renders failed.",
    blocking=True,
)
def generated_images_failure_rate(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """Stops the chain when too many images failed to render."""
    return render_failure_rate(materialization_metadata(context, AssetKey("generated_images")))


@asset_check(asset=gen_checklists, description=f"Every checklist has 1-{MAX_CHECKLIST_ITEMS} items.")
def gen_checklists_size(gen_checklists: pl.DataFrame) -> AssetCheckResult:
    """Catches checklists too short to judge or too long to answer."""
    sizes = gen_checklists["n_items"].drop_nulls()
    bad = int((~sizes.is_between(1, MAX_CHECKLIST_ITEMS)).sum())
    return AssetCheckResult(
        passed=bad == 0,
        metadata={"out_of_bounds": bad, "min_items": sizes.min() or 0, "max_items": sizes.max() or 0},
    )


@asset_check(
    asset=gen_checklists,
    description=f"GenEval checklists cover at least {MIN_GENEVAL_COVERAGE:.0%} of the ground truth.",
)
def gen_checklists_geneval_coverage(gen_checklists: pl.DataFrame) -> AssetCheckResult:
    """Warns when checklists miss the GenEval facts their prompts state."""
    coverage = gen_checklists["geneval_coverage"].drop_nulls()
    mean = float(coverage.mean()) if coverage.len() else None
    return AssetCheckResult(
        passed=mean is None or mean >= MIN_GENEVAL_COVERAGE,
        severity=AssetCheckSeverity.WARN,
        metadata={"mean_coverage": mean, "geneval_prompts": coverage.len()},
    )


@asset_check(
    asset=gen_prompts, description="Share of prompt entries quarantined in this run (warn above half)."
)
def gen_prompts_quarantine(
    context: AssetCheckExecutionContext, gen_prompts: pl.DataFrame, warehouse: WarehouseResource
) -> AssetCheckResult:
    """Flags an import that rejected too many prompt lines."""
    return quarantine_rate("gen_prompts", gen_prompts.height, warehouse, context.run.run_id)


@asset_check(asset=firm_gen_dataset, description="The published dataset has samples.", blocking=True)
def firm_gen_dataset_not_empty(firm_gen_dataset: pl.DataFrame) -> AssetCheckResult:
    """An empty dataset would train nothing: stop before the critic."""
    return AssetCheckResult(passed=firm_gen_dataset.height > 0, metadata={"rows": firm_gen_dataset.height})
