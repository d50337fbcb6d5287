"""Cost of record: what each materialization of a model-calling asset spent (migration 010), and the
summaries `firm cost` prints, per asset and data version and per model."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from warehouse.connection import Warehouse


@dataclass(frozen=True)
class ModelCost:
    """One stage's use of one model in one materialization."""

    stage: str
    model_id: str
    model_revision: str
    backend: str
    model_calls: int
    cache_hits: int
    model_seconds: float
    gpu_seconds: float
    tokens_in: int
    tokens_out: int
    images_generated: int


@dataclass(frozen=True)
class MaterializationCost:
    """One materialization: where it ran (run, asset, data version), its process's seconds and the
    models it called."""

    run_id: str
    asset_key: str
    data_version: str | None
    wall_seconds: float
    cpu_seconds: float
    models: tuple[ModelCost, ...]

    @property
    def gpu_seconds(self) -> float:
        """GPU time over every model the materialization used."""
        return sum(model.gpu_seconds for model in self.models)


MODEL_FIGURES = (
    "model_calls",
    "cache_hits",
    "model_seconds",
    "gpu_seconds",
    "tokens_in",
    "tokens_out",
    "images_generated",
)


def record_cost(warehouse: Warehouse, cost: MaterializationCost) -> None:
    """Write one materialization's cost; a retried step of the same run replaces its earlier rows."""
    key = [cost.run_id, cost.asset_key]
    with warehouse.transaction() as con:
        con.execute("DELETE FROM model_costs WHERE dagster_run_id = ? AND asset_key = ?", key)
        con.execute("DELETE FROM materialization_costs WHERE dagster_run_id = ? AND asset_key = ?", key)
        con.execute(
            "INSERT INTO materialization_costs (dagster_run_id, asset_key, data_version, wall_seconds,"
            " cpu_seconds, gpu_seconds) VALUES (?, ?, ?, ?, ?, ?)",
            [*key, cost.data_version, cost.wall_seconds, cost.cpu_seconds, cost.gpu_seconds],
        )
        for m in cost.models:
            con.execute(
                "INSERT INTO model_costs (dagster_run_id, asset_key, stage, model_id, model_revision,"
                f" backend, {', '.join(MODEL_FIGURES)}) VALUES ({', '.join('?' * (6 + len(MODEL_FIGURES)))})",
                [
                    *key,
                    m.stage,
                    m.model_id,
                    m.model_revision,
                    m.backend,
                    *(getattr(m, f) for f in MODEL_FIGURES),
                ],
            )


def _filters(alias: str, asset: str | None, run: str | None) -> tuple[str, list[str]]:
    """WHERE clause for an optional asset key and an optional run id (or its prefix)."""
    clauses, params = ["TRUE"], []
    if asset:
        clauses.append(f"{alias}.asset_key = ?")
        params.append(asset)
    if run:
        clauses.append(f"starts_with({alias}.dagster_run_id, ?)")
        params.append(run)
    return " AND ".join(clauses), params


def asset_summary(warehouse: Warehouse, asset: str | None = None, run: str | None = None) -> pl.DataFrame:
    """One row per asset and data version: materializations, their wall/CPU/GPU seconds, and the
    model figures of all their stages summed."""
    where, params = _filters("m", asset, run)
    figures = [f for f in MODEL_FIGURES if f != "gpu_seconds"]  # GPU seconds are the materialization's
    inner = ", ".join(f"sum({f}) AS {f}" for f in figures)
    sums = ", ".join(f"coalesce(sum(c.{f}), 0) AS {f}" for f in figures)
    return warehouse.query(
        f"""
        WITH models AS (
            SELECT dagster_run_id, asset_key, {inner}
            FROM model_costs GROUP BY dagster_run_id, asset_key
        )
        SELECT m.asset_key, m.data_version, count(*) AS materializations,
               sum(m.wall_seconds) AS wall_seconds, sum(m.cpu_seconds) AS cpu_seconds,
               sum(m.gpu_seconds) AS gpu_seconds, {sums}
        FROM materialization_costs m LEFT JOIN models c USING (dagster_run_id, asset_key)
        WHERE {where}
        GROUP BY m.asset_key, m.data_version
        ORDER BY m.asset_key, min(m.recorded_at)
        """,
        params,
    )


def model_summary(warehouse: Warehouse, asset: str | None = None, run: str | None = None) -> pl.DataFrame:
    """One row per asset, data version and model (id and revision): the model figures summed."""
    where, params = _filters("m", asset, run)
    sums = ", ".join(f"sum(c.{f}) AS {f}" for f in MODEL_FIGURES)
    return warehouse.query(
        f"""
        SELECT m.asset_key, m.data_version, c.model_id, c.model_revision, {sums}
        FROM model_costs c JOIN materialization_costs m USING (dagster_run_id, asset_key)
        WHERE {where}
        GROUP BY m.asset_key, m.data_version, c.model_id, c.model_revision
        ORDER BY m.asset_key, m.data_version, c.model_id
        """,
        params,
    )


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


ASSET_COLUMNS = (
    "asset_key",
    "data_version",
    "materializations",
    "model_calls",
    "cache_hits",
    "model_seconds",
    "cpu_seconds",
    "gpu_seconds",
    "tokens_in",
    "tokens_out",
    "images_generated",
)
MODEL_COLUMNS = ("asset_key", "data_version", "model_id", "model_calls", "cache_hits", "model_seconds")
MODEL_COLUMNS += ("tokens_in", "tokens_out", "images_generated")


def table(frame: pl.DataFrame, columns: tuple[str, ...]) -> str:
    """Rows as aligned text columns (data versions shortened to 12 characters)."""
    rows = [columns] + [
        tuple(_cell(row[c])[:12] if c == "data_version" else _cell(row[c]) for c in columns)
        for row in frame.iter_rows(named=True)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
    )


def cost_report(assets: pl.DataFrame, models: pl.DataFrame) -> str:
    """`firm cost`'s answer: per asset and data version, then per model."""
    return (
        "cost per asset and data version\n"
        + table(assets, ASSET_COLUMNS)
        + "\n\nper model\n"
        + table(models, MODEL_COLUMNS)
    )
