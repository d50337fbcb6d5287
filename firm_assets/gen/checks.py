"""Gates on the gen chain: score ranges, failure rates of every model stage, checklist sizes and
GenEval coverage."""

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, asset_check

from firm_assets.curation import gates
from firm_assets.curation.parsers import MAX_CHECKLIST_ITEMS
from firm_assets.gen.checklists import gen_checklists
from firm_assets.gen.dataset import firm_gen_dataset
from firm_assets.gen.images import generated_images
from firm_assets.gen.prompts import gen_prompts
from firm_assets.gen.scores import gen_scores

MIN_GENEVAL_COVERAGE = 0.5

gen_scores_in_range = gates.scores_in_range_check(
    gen_scores,
    ["if_score", "quality_score", "quality_scores"],
    "Instruction-following and quality scores lie in 1-5.",
)
gen_scores_failure_rate = gates.failure_rate_check(gen_scores, ["if_score", "quality_score"], "scores")
gen_scores_judge_drift = gates.judge_drift_check(
    gen_scores, "gen", ["gen_instruction_following", "gen_quality"], "image_id"
)
gen_checklists_failure_rate = gates.failure_rate_check(gen_checklists, ["items"], "plans")
generated_images_failure_rate = gates.render_failure_check(generated_images, "image renders")
gen_prompts_quarantine = gates.quarantine_check(gen_prompts, "prompt entries")
firm_gen_dataset_not_empty = gates.not_empty_check(firm_gen_dataset)


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
