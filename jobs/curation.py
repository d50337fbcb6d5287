"""Jobs. They run in one process so each model loads once per run, not once per step."""

from dagster import AssetSelection, define_asset_job, in_process_executor

EDIT_GROUP = "edit"
GEN_GROUP = "gen"
RL_GROUP = "rl"

main_job = define_asset_job(
    "main",
    selection=AssetSelection.all(),
    executor_def=in_process_executor,
    description="Materialize every asset on the active profile (the README's main command).",
)

edit_curation_job = define_asset_job(
    "edit_curation",
    selection=AssetSelection.groups(EDIT_GROUP),
    executor_def=in_process_executor,
    description="Re-curate the FIRM-Edit chain; unchanged samples come from the cache.",
)

gen_curation_job = define_asset_job(
    "gen_curation",
    selection=AssetSelection.groups(GEN_GROUP),
    executor_def=in_process_executor,
    description="Re-curate the FIRM-Gen chain; unchanged samples come from the cache.",
)

rl_job = define_asset_job(
    "rl",
    selection=AssetSelection.groups(RL_GROUP),
    executor_def=in_process_executor,
    description="Train the RL policies (DiffusionNFT) against the latest critics and prompt sets; a "
    "policy version that exists is not retrained.",
)
