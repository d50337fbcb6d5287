"""Jobs. They take the code location's executor (firm_assets/executors.py): one process locally, so
each model loads once per run, not once per step."""

from dagster import AssetSelection, define_asset_job

EDIT_GROUP = "edit"
GEN_GROUP = "gen"

main_job = define_asset_job(
    "main",
    selection=AssetSelection.all(),
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
