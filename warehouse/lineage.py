"""Lineage questions answered from the warehouse: what produced a dataset version, and where a
sample went. Reads views and tables only; every answer is exact (no "latest file" guessing)."""

from typing import Any

import polars as pl

from warehouse.connection import Warehouse


def find_dataset_versions(warehouse: Warehouse, ref: str) -> pl.DataFrame:
    """Versions matching `ref`: a dataset name (all its versions), `name@version-prefix`, or a prefix."""
    name, _, prefix = ref.partition("@")
    if prefix:
        sql, params = "WHERE dataset = ? AND starts_with(version, ?)", [name, prefix]
    else:
        sql, params = "WHERE dataset = ? OR starts_with(version, ?)", [ref, ref]
    return warehouse.query(f"SELECT * FROM dataset_audit {sql} ORDER BY created_at", params)


def dataset_report(row: dict[str, Any]) -> str:
    lines = [
        f"dataset {row['dataset']} version {row['version']}",
        f"  samples: {row['n_samples']}   created: {row['created_at']}",
        "  sources: " + ", ".join(f"{s['source']}={s['samples']}" for s in row["sources"] or []),
        "  prompt templates:",
        *(f"    {t}" for t in row["templates"] or []),
        "  curation models:",
        *(f"    {m}" for m in row["models"] or []),
        f"  published by Dagster run {row['published_by_dagster_run']}, MLflow run {row['mlflow_run_id']}",
        "  curation Dagster runs: " + ", ".join(r for r in row["curation_dagster_runs"] or [] if r),
    ]
    return "\n".join(lines)


def sample_memberships(warehouse: Warehouse, sample_id: str) -> pl.DataFrame:
    """Every dataset version whose membership holds the sample."""
    return warehouse.query(
        "SELECT m.dataset, m.version, m.source, v.created_at FROM dataset_members m"
        " JOIN dataset_versions v USING (dataset, version) WHERE m.sample_id = ? ORDER BY v.created_at",
        [sample_id],
    )
