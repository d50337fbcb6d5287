"""Inbox folders: request and prompt files dropped there become dynamic partitions (one per file name)
that `sensors.inbox` adds, and these assets import one file each into the warehouse.

They are separate from `edit_requests`/`gen_prompts` (which read one configured source as a whole)
because the curation chain downstream is unpartitioned: partitioning the importers would make every
stage downstream depend on all files. Here each file is imported once per content, its rows kept in
`inbox_edit_requests`/`inbox_gen_prompts` (replaced when the file changes) and its import in
`inbox_files`; the same importers and quarantine rules as the chain's apply. The entry assets read
those rows back (`inbox_edit_rows`, `inbox_prompts`) after their configured source, so a dropped file
reaches the datasets on their next run.
"""

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    BetaWarning,
    DynamicPartitionsDefinition,
    MaterializeResult,
    asset,
)

from firm_assets.curation.lines import Quarantined
from firm_assets.curation.records import record_quarantine
from firm_assets.edit.importer import read_edit_requests
from firm_assets.gen.importers import GenPrompt, read_prompts
from resources.home import firm_home
from resources.warehouse_resource import WarehouseResource
from warehouse.connection import Warehouse

GROUP = "inbox"
EDIT_INBOX = "edit"
GEN_INBOX = "gen"
INBOX_ENV = {EDIT_INBOX: "FIRM_EDIT_INBOX", GEN_INBOX: "FIRM_GEN_INBOX"}
SUFFIXES = {EDIT_INBOX: (".jsonl",), GEN_INBOX: (".json", ".jsonl", ".txt")}
# Partition keys are file names; these characters keep them safe in URLs, tags and SQL literals.
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

EDIT_INBOX_PARTITIONS = DynamicPartitionsDefinition(name="edit_inbox_files")
GEN_INBOX_PARTITIONS = DynamicPartitionsDefinition(name="gen_inbox_files")


def inbox_dir(inbox: str) -> Path:
    """The folder an inbox watches: its environment variable, else FIRM_HOME/inbox/<inbox>."""
    chosen = os.environ.get(INBOX_ENV[inbox], "")
    return Path(chosen) if chosen else firm_home() / "inbox" / inbox


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store(
    warehouse: Warehouse,
    inbox: str,
    name: str,
    digest: str,
    table: str,
    rows: list[tuple],
    bad: list[Quarantined],
    run_id: str,
) -> dict[str, int | str]:
    """Replace the file's rows in `table` (its first column is the file name), record the import in
    `inbox_files` and the bad entries in the chain's quarantine table."""
    with warehouse.transaction() as con:
        con.execute(f"DELETE FROM {table} WHERE file = ?", [name])
        if rows:
            marks = ", ".join("?" * (len(rows[0]) + 1))
            con.executemany(f"INSERT INTO {table} VALUES ({marks})", [(name, *row) for row in rows])
        con.execute("DELETE FROM inbox_files WHERE inbox = ? AND file = ?", [inbox, name])
        con.execute(
            "INSERT INTO inbox_files (inbox, file, sha256, n_rows, quarantined, dagster_run_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [inbox, name, digest, len(rows), len(bad), run_id],
        )
    record_quarantine(warehouse, table, [q.as_row() for q in bad], run_id)
    return {"file": name, "sha256": digest, "rows": len(rows), "quarantined": len(bad)}


def import_edit_file(warehouse: Warehouse, name: str, run_id: str) -> dict[str, int | str]:
    """Import one edit-inbox file: its requests replace that file's earlier ones, bad lines are
    quarantined. Returns what was imported, for the materialization's metadata."""
    path = inbox_dir(EDIT_INBOX) / name
    requests, bad = read_edit_requests(path)
    root = str(path.parent.resolve())
    rows = [
        (r.request_id, r.instruction, r.requirement, r.image, list(r.edited_images), root, r.line)
        for r in requests
    ]
    return _store(warehouse, EDIT_INBOX, name, file_digest(path), "inbox_edit_requests", rows, bad, run_id)


def import_gen_file(warehouse: Warehouse, name: str, run_id: str) -> dict[str, int | str]:
    """Import one gen-inbox file (format by suffix, as `read_prompts`): its prompts replace that
    file's earlier ones; bad entries and repeats within the file are quarantined."""
    path = inbox_dir(GEN_INBOX) / name
    imported = read_prompts(path)
    rows = [(p.prompt_id, p.prompt, p.locator, p.tag, p.geneval) for p in imported.prompts]
    bad = imported.bad + imported.duplicates
    return _store(warehouse, GEN_INBOX, name, file_digest(path), "inbox_gen_prompts", rows, bad, run_id)


def _file_hashes(con, inbox: str) -> dict[str, str]:
    """Each imported file of an inbox (its partition key) and the content hash imported."""
    rows = con.execute("SELECT file, sha256 FROM inbox_files WHERE inbox = ? ORDER BY file", [inbox])
    return dict(rows.fetchall())


def inbox_edit_rows(warehouse: Warehouse) -> tuple[list[dict], dict[str, str]]:
    """The imported edit requests, in the entry asset's row shape plus `file`, by file then line
    (the order that decides which of two equal requests is the first), and each file's imported
    hash, read in one transaction so the hashes are those of the rows returned."""
    with warehouse.transaction() as con:
        rows = con.execute(
            "SELECT file, request_id, instruction, requirement, image, edited_images, images_root, line"
            " FROM inbox_edit_requests ORDER BY file, line"
        ).fetchall()
        hashes = _file_hashes(con, EDIT_INBOX)
    requests = [
        {
            "file": file,
            "request_id": request_id,
            "instruction": instruction,
            "requirement": requirement,
            "image": image,
            "edited_images": list(edited),
            "images_root": root,
            "source": str(Path(root) / file),
            "line": line,
        }
        for file, request_id, instruction, requirement, image, edited, root, line in rows
    ]
    return requests, hashes


def inbox_prompts(warehouse: Warehouse) -> tuple[list[GenPrompt], dict[str, str]]:
    """The imported prompts, by file (a file holds no repeats: its import quarantined them), and each
    file's imported hash, read in one transaction so the hashes are those of the prompts returned."""
    with warehouse.transaction() as con:
        rows = con.execute(
            "SELECT file, prompt_id, prompt, locator, tag, geneval FROM inbox_gen_prompts"
            " ORDER BY file, prompt_id"
        ).fetchall()
        hashes = _file_hashes(con, GEN_INBOX)
    folder = inbox_dir(GEN_INBOX)
    prompts = [
        GenPrompt(prompt_id, prompt, str(folder / file), locator, tag, geneval)
        for file, prompt_id, prompt, locator, tag, geneval in rows
    ]
    return prompts, hashes


def _metadata(imports: list[dict[str, int | str]]) -> dict:
    return {
        "files": len(imports),
        "rows": sum(int(i["rows"]) for i in imports),
        "quarantined": sum(int(i["quarantined"]) for i in imports),
        "imports": json.dumps(imports),
    }


def _single_run_asset(**kwargs):
    """@asset whose backfill over many partitions (files) is one run importing them all. Only
    `backfill_policy` says that, and in Dagster 1.13 it is a beta parameter of @asset with no stable
    equivalent: its BetaWarning, and no other, is silenced so loading the code location stays quiet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`backfill_policy`", category=BetaWarning)
        return asset(backfill_policy=BackfillPolicy.single_run(), **kwargs)


@_single_run_asset(
    group_name=GROUP,
    partitions_def=EDIT_INBOX_PARTITIONS,
    code_version="edit_inbox@1",
    kinds={"duckdb"},
    description="One edit-inbox JSONL file (the partition key is its name) imported into "
    "inbox_edit_requests; bad lines quarantined with a reason.",
)
def edit_inbox_requests(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    wh = warehouse.get()
    imports = [import_edit_file(wh, key, context.run_id) for key in context.partition_keys]
    return MaterializeResult(metadata=_metadata(imports))


@_single_run_asset(
    group_name=GROUP,
    partitions_def=GEN_INBOX_PARTITIONS,
    code_version="gen_inbox@1",
    kinds={"duckdb"},
    description="One gen-inbox prompt file (.json list, GenEval .jsonl, .txt; the partition key is "
    "its name) imported into inbox_gen_prompts; bad entries and repeats quarantined with a reason.",
)
def gen_inbox_prompts(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    wh = warehouse.get()
    imports = [import_gen_file(wh, key, context.run_id) for key in context.partition_keys]
    return MaterializeResult(metadata=_metadata(imports))
