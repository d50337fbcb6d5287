"""`gen_checklists`: the planner turns each prompt into atomic, visually verifiable checklist items."""

import json

import polars as pl
from dagster import AssetExecutionContext, Output

from firm_assets.curation.parsers import CHECKLIST_CATEGORIES, CHECKLIST_JSON, MAX_CHECKLIST_ITEMS
from firm_assets.curation.prompts import load_template
from firm_assets.curation.roles import chat_stage, static_code_version
from firm_assets.curation.stage import StageInput
from firm_assets.curation.stage_asset import StageRun, curation_asset
from firm_assets.gen.coverage import checklist_coverage
from resources.models import ModelsResource
from resources.warehouse_resource import WarehouseResource

GROUP = "gen"
TEMPLATE = "checklist_plan"
CODE_VERSION = static_code_version(load_template(TEMPLATE).ref, CHECKLIST_JSON.ref)
# the planning prompt states the limits the parser applies, from the same constants
PLAN_LIMITS = {"max_items": str(MAX_CHECKLIST_ITEMS), "categories": ", ".join(CHECKLIST_CATEGORIES)}

CHECKLIST_SCHEMA = {
    "prompt_id": pl.String,
    "items": pl.String,  # JSON list of {"category", "item", "question"}
    "n_items": pl.Int64,
    "geneval_coverage": pl.Float64,
    "checklist_key": pl.String,
    "failure": pl.String,
}


def numbered_checklist(items_json: str) -> str:
    """The checklist as the scoring prompt shows it: `N. [category] question`."""
    items = json.loads(items_json)
    return "\n".join(f"{i}. [{item['category']}] {item['question']}" for i, item in enumerate(items, start=1))


@curation_asset(GROUP, code_version=CODE_VERSION, kinds={"duckdb", "transformers"})
def gen_checklists(
    context: AssetExecutionContext,
    gen_prompts: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
) -> Output[pl.DataFrame]:
    """The checklist per prompt (planner role) that the judge verifies generated images against:
    categorised yes/no items; a malformed plan is a recorded failure; GenEval prompts get their
    ground-truth coverage."""
    stage_run = StageRun.start(context, models, warehouse)
    stage = chat_stage(
        stage_run.profile, "gen_checklists", TEMPLATE, CHECKLIST_JSON, "checklist", scored=False
    )
    inputs = [
        StageInput(row["prompt_id"], {"prompt": row["prompt"], **PLAN_LIMITS}, {})
        for row in gen_prompts.iter_rows(named=True)
    ]
    results, stats = stage_run.chat(stage, "planner", inputs)
    geneval = dict(zip(gen_prompts["prompt_id"], gen_prompts["geneval"], strict=True))
    rows = []
    for prompt_id, result in results.items():
        items = result.outcome.parsed["items"] if result.outcome.ok else None
        rows.append(
            {
                "prompt_id": prompt_id,
                "items": json.dumps(items) if items else None,
                "n_items": len(items) if items else None,
                "geneval_coverage": checklist_coverage(geneval[prompt_id], items)
                if items and geneval[prompt_id]
                else None,
                "checklist_key": result.cache_key,
                "failure": result.outcome.failure,
            }
        )
    frame = pl.DataFrame(rows, schema=CHECKLIST_SCHEMA).sort("prompt_id")
    coverage = frame["geneval_coverage"].drop_nulls()
    metadata = {
        **stats.as_metadata(),
        "mean_items": float(frame["n_items"].mean() or 0.0),
        # plans the parser repaired (truncated, category read as "other"): the notes are in the cache
        "repaired_plans": sum(1 for r in results.values() if r.outcome.ok and r.outcome.parsed.get("notes")),
        "geneval_coverage": float(coverage.mean()) if coverage.len() else None,
    }
    return stage_run.output(frame, metadata)
