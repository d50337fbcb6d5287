"""Jobs. They take the code location's executor (firm_assets/executors.py): one process locally, so
each model loads once per run, not once per step."""

from dagster import AssetsDefinition, AssetSelection, define_asset_job
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from firm_assets.edit.inbox import edit_inbox_requests
from firm_assets.gen.inbox import gen_inbox_prompts

EDIT_GROUP = "edit"
GEN_GROUP = "gen"
RL_GROUP = "rl"
BENCH_GROUP = "bench"
INBOX_GROUP = "inbox"

main_job = define_asset_job(
    "main",
    # the inbox assets are partitioned by file; their sensors run them one file at a time
    selection=AssetSelection.all() - AssetSelection.groups(INBOX_GROUP),
    description="Materialize every asset on the active profile (the README's main command).",
)


def _group_job(name: str, group: str, description: str) -> UnresolvedAssetJobDefinition:
    """A job that materializes one asset group."""
    return define_asset_job(name, selection=AssetSelection.groups(group), description=description)


def _inbox_job(name: str, inbox_asset: AssetsDefinition, description: str) -> UnresolvedAssetJobDefinition:
    """A job that imports one file of an inbox (one partition of its inbox asset; its sensor picks it)."""
    return define_asset_job(name, selection=AssetSelection.assets(inbox_asset), description=description)


edit_curation_job = _group_job(
    "edit_curation", EDIT_GROUP, "Re-curate the FIRM-Edit chain; unchanged samples come from the cache."
)
gen_curation_job = _group_job(
    "gen_curation", GEN_GROUP, "Re-curate the FIRM-Gen chain; unchanged samples come from the cache."
)
rl_job = _group_job(
    "rl",
    RL_GROUP,
    "Train the RL policies (DiffusionNFT) against the latest critics and prompt sets; a "
    "policy version that exists is not retrained.",
)
bench_job = _group_job(
    "bench", BENCH_GROUP, "Re-import FIRM-Bench and re-evaluate bench_results (the bench sensors' target)."
)
edit_inbox_job = _inbox_job(
    "edit_inbox", edit_inbox_requests, "Import one edit-inbox file (a partition) into the warehouse."
)
gen_inbox_job = _inbox_job(
    "gen_inbox", gen_inbox_prompts, "Import one gen-inbox prompt file (a partition) into the warehouse."
)

# Every named job, in the order `firm --help` lists them.
JOBS = (main_job, edit_curation_job, gen_curation_job, rl_job, bench_job, edit_inbox_job, gen_inbox_job)
