"""`gen_prompts`: text-to-image prompts from JSON lists, plain text and GenEval metadata files, then
the prompts imported from the gen inbox (`firm_assets/gen/inbox.py`)."""

import json
import os
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, Config, Output, asset
from pydantic import Field

from firm_assets.curation.records import flag_score_text, record_quarantine
from firm_assets.curation.stage_asset import versioned_output
from firm_assets.curation.versioning import frame_version
from firm_assets.gen.importers import read_prompt_files
from firm_assets.gen.inbox import inbox_prompts
from resources.warehouse_resource import WarehouseResource

GROUP = "gen"
PROMPTS_ENV = "FIRM_GEN_PROMPTS"
DEMO_DIR = Path(__file__).parent / "demo"
DEMO_FILES = (DEMO_DIR / "geneval_style.jsonl", DEMO_DIR / "free_form.txt")

PROMPT_SCHEMA = {
    "prompt_id": pl.String,
    "prompt": pl.String,
    "source": pl.String,
    "locator": pl.String,
    "tag": pl.String,
    "geneval": pl.String,
}


class GenPromptsConfig(Config):
    """Which prompt files the generation chain imports."""

    prompt_files: list[str] = Field(
        default=[],
        description=f"Prompt files (.json list, .jsonl GenEval metadata, text); empty: ${PROMPTS_ENV} "
        "(paths joined by ':'), else the built-in demo prompts.",
    )


def prompt_files(config: GenPromptsConfig) -> list[Path]:
    """Explicit config, then the environment, then the demo prompts shipped with the project."""
    if config.prompt_files:
        return [Path(p) for p in config.prompt_files]
    if os.environ.get(PROMPTS_ENV):
        return [Path(p) for p in os.environ[PROMPTS_ENV].split(os.pathsep) if p]
    return list(DEMO_FILES)


@asset(group_name=GROUP, code_version="gen_importer@1", kinds={"duckdb"})
def gen_prompts(
    context: AssetExecutionContext, config: GenPromptsConfig, warehouse: WarehouseResource
) -> Output[pl.DataFrame]:
    """The text-to-image prompts that the generation chain curates: from the configured files, then
    the gen inbox's imported files, deduplicated by normalised text across all of them; GenEval
    metadata kept as a ground-truth checklist; bad entries and repeats quarantined with a reason."""
    wh = warehouse.get()
    imported = read_prompt_files(prompt_files(config))
    from_inbox, files = inbox_prompts(wh)
    for prompt in from_inbox:  # after the configured files, so theirs is a prompt's first occurrence
        imported.add(Path(prompt.source), prompt.locator, prompt.prompt, prompt)
    kept = set(imported.prompts)
    fed = sorted({Path(prompt.source).name for prompt in from_inbox if prompt in kept})
    rows = [q.as_row() for q in imported.bad + imported.duplicates]
    count = record_quarantine(wh, "gen_prompts", rows, context.run_id)
    if imported.bad:
        context.log.warning(f"{len(imported.bad)} prompt entries quarantined; see the quarantine table")
    frame = pl.DataFrame([p.__dict__ for p in imported.prompts], schema=PROMPT_SCHEMA).sort("prompt_id")
    flagged = flag_score_text(context, wh, frame.iter_rows(named=True), ("prompt",), "prompt(s)")
    version = frame_version(frame.drop("source", "locator"))
    return versioned_output(
        frame,
        version,
        {
            "quarantined": count,
            **flagged,
            "duplicates": len(imported.duplicates),
            "inbox_files": json.dumps({name: files[name] for name in fed}),
        },
    )
