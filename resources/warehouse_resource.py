"""The warehouse as a Dagster resource and as the IO manager that stores asset tables."""

from __future__ import annotations

import re

import polars as pl
from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, OutputContext

from resources.home import warehouse_path
from warehouse.connection import Warehouse

_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class WarehouseResource(ConfigurableResource):
    """Points at the DuckDB file; `get()` gives the lock-disciplined Warehouse."""

    path: str = ""

    def get(self) -> Warehouse:
        return Warehouse(self.path or warehouse_path())


class WarehouseIOManager(ConfigurableIOManager):
    """Each asset's output frame becomes table `assets.<asset name>`, replaced whole; downstream
    assets read it back. One store for rows, queryable with plain SQL next to the lineage tables."""

    path: str = ""

    def _warehouse(self) -> Warehouse:
        return Warehouse(self.path or warehouse_path())

    @staticmethod
    def _table(asset_key) -> str:
        name = asset_key.path[-1]
        if not _TABLE_NAME.match(name):
            raise ValueError(f"asset name {name!r} is not a valid table name")
        return f"assets.{name}"

    def handle_output(self, context: OutputContext, obj: pl.DataFrame) -> None:
        table = self._table(context.asset_key)
        arrow = obj.to_arrow()
        with self._warehouse().transaction() as con:
            con.register("asset_frame", arrow)
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM asset_frame")
            con.unregister("asset_frame")

    def load_input(self, context: InputContext) -> pl.DataFrame:
        table = self._table(context.asset_key)
        with self._warehouse().transaction() as con:
            return con.sql(f"SELECT * FROM {table}").pl()
