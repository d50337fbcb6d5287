"""Jobs. They take the code location's executor (firm_assets/executors.py): one process locally, so
each model loads once per run, not once per step."""

from dagster import AssetSelection, define_asset_job

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

edit_curation_job = define_asset_job(
    "edit_curation",
    selection=AssetSelection.groups(EDIT_GROUP),
    description="Re-curate the FIRM-Edit chain; unchanged samples come from the cache.",
)

gen_curation_job = define_asset_job(
    "gen_curation",
    selection=AssetSelection.groups(GEN_GROUP),
    description="Re-curate the FIRM-Gen chain; unchanged samples come from the cache.",
)

rl_job = define_asset_job(
    "rl",
    selection=AssetSelection.groups(RL_GROUP),
    description="Train the RL policies (DiffusionNFT) against the latest critics and prompt sets; a "
    "policy version that exists is not retrained.",
)

bench_job = define_asset_job(
    "bench",
    selection=AssetSelection.groups(BENCH_GROUP),
    description="Re-import FIRM-Bench and re-evaluate bench_results (the bench sensors' target).",
)

edit_inbox_job = define_asset_job(
    "edit_inbox",
    selection=AssetSelection.assets(edit_inbox_requests),
    description="Import one edit-inbox file (a partition) into the warehouse.",
)

gen_inbox_job = define_asset_job(
    "gen_inbox",
    selection=AssetSelection.assets(gen_inbox_prompts),
    description="Import one gen-inbox prompt file (a partition) into the warehouse.",
)

# Every named job, in the order `firm --help` lists them.
JOBS = (main_job, edit_curation_job, gen_curation_job, rl_job, bench_job, edit_inbox_job, gen_inbox_job)
