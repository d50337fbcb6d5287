"""Inbox folders, the part both chains share: files dropped there become dynamic partitions (one per
file name) that `sensors.inbox` adds, and each chain's inbox asset (`edit/inbox.py`, `gen/inbox.py`)
imports one file each into the warehouse with these helpers.

The inbox assets are separate from `edit_requests`/`gen_prompts` (which read one configured source as a
whole) because the curation chain downstream is unpartitioned: partitioning the importers would make
every stage downstream depend on all files. Each file is imported once per content, its rows kept in
the chain's inbox table (replaced when the file changes) and its import in `inbox_files`; the chain's
importers and quarantine rules apply. The entry assets read those rows back after their configured
source, so a dropped file reaches the datasets on their next run.
"""

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    BetaWarning,
    DynamicPartitionsDefinition,
    MaterializeResult,
    asset,
)

from firm_assets.curation.lines import Quarantined
from firm_assets.curation.records import record_quarantine
from firm_assets.curation.versioning import file_digest
from resources.home import firm_home
from resources.warehouse_resource import WarehouseResource
from warehouse.connection import Warehouse

GROUP = "inbox"
# Partition keys are file names; these characters keep them safe in URLs, tags and SQL literals.
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Inbox:
    """One chain's inbox: its name (`inbox_files.inbox`), the variable that moves its folder, the file
    suffixes it takes and the dynamic partitions its files become."""

    name: str
    env: str
    suffixes: tuple[str, ...]
    partitions: DynamicPartitionsDefinition


def inbox_dir(inbox: Inbox) -> Path:
    """The folder an inbox watches: its environment variable, else FIRM_HOME/inbox/<name>."""
    chosen = os.environ.get(inbox.env, "")
    return Path(chosen) if chosen else firm_home() / "inbox" / inbox.name


def store_file(
    warehouse: Warehouse,
    inbox: Inbox,
    name: str,
    table: str,
    rows: list[tuple],
    bad: list[Quarantined],
    run_id: str,
) -> dict[str, int | str]:
    """Replace the file's rows in `table` (its first column is the file name), record the import in
    `inbox_files` and the bad entries in the chain's quarantine table."""
    digest = file_digest(inbox_dir(inbox) / name)
    with warehouse.transaction() as con:
        con.execute(f"DELETE FROM {table} WHERE file = ?", [name])
        if rows:
            marks = ", ".join("?" * (len(rows[0]) + 1))
            con.executemany(f"INSERT INTO {table} VALUES ({marks})", [(name, *row) for row in rows])
        con.execute("DELETE FROM inbox_files WHERE inbox = ? AND file = ?", [inbox.name, name])
        con.execute(
            "INSERT INTO inbox_files (inbox, file, sha256, n_rows, quarantined, dagster_run_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [inbox.name, name, digest, len(rows), len(bad), run_id],
        )
    record_quarantine(warehouse, table, [q.as_row() for q in bad], run_id)
    return {"file": name, "sha256": digest, "rows": len(rows), "quarantined": len(bad)}


def read_imported(warehouse: Warehouse, inbox: Inbox, query: str) -> tuple[list[tuple], dict[str, str]]:
    """The rows `query` reads from the inbox's table, and each imported file (its partition key) with
    the content hash imported, read in one transaction so the hashes are those of the rows returned."""
    with warehouse.transaction() as con:
        rows = con.execute(query).fetchall()
        hashes = con.execute(
            "SELECT file, sha256 FROM inbox_files WHERE inbox = ? ORDER BY file", [inbox.name]
        ).fetchall()
    return rows, dict(hashes)


def import_files(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    import_file: Callable[[Warehouse, str, str], dict[str, int | str]],
) -> MaterializeResult:
    """An inbox asset's body: `import_file` each of the run's files (one partition, or a range in one
    backfill run); the metadata holds the files imported, their rows and quarantined entries."""
    wh = warehouse.get()
    imports = [import_file(wh, key, context.run_id) for key in context.partition_keys]
    return MaterializeResult(
        metadata={
            "files": len(imports),
            "rows": sum(int(i["rows"]) for i in imports),
            "quarantined": sum(int(i["quarantined"]) for i in imports),
            "imports": json.dumps(imports),
        }
    )


def inbox_asset(inbox: Inbox, **kwargs):
    """@asset over an inbox's partitions whose backfill over many partitions (files) is one run
    importing them all. Only `backfill_policy` says that, and in Dagster 1.13 it is a beta parameter of
    @asset with no stable equivalent: its BetaWarning, and no other, is silenced so loading the code
    location stays quiet."""

    def wrap(fn) -> AssetsDefinition:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*`backfill_policy`", category=BetaWarning)
            return asset(
                backfill_policy=BackfillPolicy.single_run(),
                group_name=GROUP,
                partitions_def=inbox.partitions,
                kinds={"duckdb"},
                **kwargs,
            )(fn)

    return wrap
