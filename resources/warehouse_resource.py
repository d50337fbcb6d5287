"""The warehouse as a Dagster resource and as the IO manager that stores asset tables."""

from __future__ import annotations

import re

import duckdb
import polars as pl
from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    DagsterInstance,
    InputContext,
    OutputContext,
    RunsFilter,
)
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from resources.home import warehouse_path
from warehouse.connection import Warehouse

_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
RUN_COLUMN = "_dagster_run_id"
RUNS_KEPT = 8


class WarehouseResource(ConfigurableResource):
    """Points at the DuckDB file; `get()` gives the lock-disciplined Warehouse."""

    path: str = ""

    def get(self) -> Warehouse:
        """A warehouse handle on the configured (or default) database."""
        return Warehouse(self.path or warehouse_path())


class WarehouseIOManager(ConfigurableIOManager):
    """Each asset's output rows go to `asset_rows.<asset>`, tagged with the Dagster run that made
    them, and each step loads exactly the rows of the run that produced its input — so two runs at
    the same time never read each other's outputs. `assets.<asset>` is a view of the latest written
    run's rows, for people and SQL. The last RUNS_KEPT runs per asset are kept, and older ones as
    long as an unfinished run may still load them (see `_needed_runs`)."""

    path: str = ""

    def _warehouse(self) -> Warehouse:
        return Warehouse(self.path or warehouse_path())

    @staticmethod
    def _name(asset_key) -> str:
        name = asset_key.path[-1]
        if not _TABLE_NAME.match(name):
            raise ValueError(f"asset name {name!r} is not a valid table name")
        return name

    def handle_output(self, context: OutputContext, obj: pl.DataFrame) -> None:
        """Stores an asset's frame as its warehouse table, tagged with the run."""
        name, run_id = self._name(context.asset_key), context.run_id
        rows = obj.with_columns(pl.lit(run_id).alias(RUN_COLUMN)).to_arrow()
        with self._warehouse().transaction() as con:
            con.register("asset_frame", rows)
            _append(con, name, run_id)
            con.unregister("asset_frame")
            con.execute(
                f"CREATE OR REPLACE VIEW assets.{name} AS SELECT * EXCLUDE ({RUN_COLUMN})"
                f" FROM asset_rows.{name} WHERE {RUN_COLUMN} = '{run_id}'"
            )
            _prune(con, name, _needed_runs(context.step_context.instance))

    def load_input(self, context: InputContext) -> pl.DataFrame:
        """The producing run's rows; when this instance does not know that run (an ephemeral
        instance, or rows pruned), the latest written rows, with a warning in the run's log."""
        name = self._name(context.asset_key)
        run_id = context.upstream_output.run_id
        with self._warehouse().transaction() as con:
            known = con.execute(
                "SELECT count(*) FROM asset_runs WHERE asset = ? AND run_id = ?", [name, run_id]
            )
            if known.fetchall()[0][0]:
                return con.sql(
                    f"SELECT * EXCLUDE ({RUN_COLUMN}) FROM asset_rows.{name} WHERE {RUN_COLUMN} = ?",
                    params=[run_id],
                ).pl()
            context.log.warning(f"{name}: rows of run {run_id} not stored; loading the latest run's rows")
            return con.sql(f"SELECT * FROM assets.{name}").pl()


def _append(con: duckdb.DuckDBPyConnection, name: str, run_id: str) -> None:
    """Add this run's rows; a changed schema (new code) starts the table afresh."""
    con.execute(f"CREATE TABLE IF NOT EXISTS asset_rows.{name} AS SELECT * FROM asset_frame LIMIT 0")
    current = con.execute(f"DESCRIBE asset_rows.{name}").fetchall()
    incoming = con.execute("DESCRIBE asset_frame").fetchall()
    if [row[:2] for row in current] != [row[:2] for row in incoming]:
        con.execute(f"CREATE OR REPLACE TABLE asset_rows.{name} AS SELECT * FROM asset_frame LIMIT 0")
    con.execute(f"DELETE FROM asset_rows.{name} WHERE {RUN_COLUMN} = ?", [run_id])
    con.execute(f"INSERT INTO asset_rows.{name} SELECT * FROM asset_frame")
    con.execute("INSERT INTO asset_runs (asset, run_id) VALUES (?, ?) ON CONFLICT DO NOTHING", [name, run_id])


def _needed_runs(instance: DagsterInstance) -> set[str]:
    """Runs whose rows an unfinished run may still load: each unfinished run (a long run reads its
    own upstream rows long after writing them) and the runs it re-executes (parent and root). A
    run this instance does not know (an ephemeral instance's) counts as finished."""
    unfinished = instance.get_runs(filters=RunsFilter(statuses=NOT_FINISHED_STATUSES))
    return {
        run_id for run in unfinished for run_id in (run.run_id, run.parent_run_id, run.root_run_id) if run_id
    }


def _prune(con: duckdb.DuckDBPyConnection, name: str, needed: set[str]) -> None:
    """Keep the rows of the latest RUNS_KEPT runs (by first write) of this asset, and of older runs
    that are still `needed`; drop the rest."""
    stale = con.execute(
        "SELECT run_id FROM asset_runs WHERE asset = ? ORDER BY written_at DESC OFFSET ?", [name, RUNS_KEPT]
    ).fetchall()
    for (run_id,) in stale:
        if run_id in needed:
            continue
        con.execute(f"DELETE FROM asset_rows.{name} WHERE {RUN_COLUMN} = ?", [run_id])
        con.execute("DELETE FROM asset_runs WHERE asset = ? AND run_id = ?", [name, run_id])
