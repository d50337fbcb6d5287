"""Warehouse writes shared by both chains: quarantine rows, flagged inputs, image rows and lineage edges."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue

from firm_assets.curation.score_text import has_score_text
from warehouse.connection import Warehouse


def _record_for_asset(
    warehouse: Warehouse,
    table: str,
    columns: Sequence[str],
    asset: str,
    rows: Sequence[tuple],
    run_id: str | None,
) -> int:
    """Store rows of an asset's run in `table` (`asset`, then `columns`, then `dagster_run_id`);
    returns how many."""
    if rows:
        names = ("asset", *columns, "dagster_run_id")
        with warehouse.transaction() as con:
            con.executemany(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [(asset, *row, run_id) for row in rows],
            )
    return len(rows)


def record_quarantine(
    warehouse: Warehouse, asset: str, rows: Sequence[tuple[str, str, str, str]], run_id: str | None
) -> int:
    """Store (source, locator, raw, reason) rows; returns how many."""
    return _record_for_asset(
        warehouse, "quarantine", ("source", "locator", "raw", "reason"), asset, rows, run_id
    )


SCORE_TEXT_FLAG = "score_text_in_input"


def score_text_flags(rows: Iterable[dict], fields: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """(source, locator, field, text) for every named text field of the rows that holds score-shaped
    text (`score_text.has_score_text`): such inputs are kept, but a judge echoing them must never be
    read as scoring, so they are flagged for a person to see."""
    return [
        (row["source"], row["locator"], field, row[field])
        for row in rows
        for field in fields
        if isinstance(row.get(field), str) and has_score_text(row[field])
    ]


def record_input_flags(
    warehouse: Warehouse, asset: str, flag: str, rows: Sequence[tuple[str, str, str, str]], run_id: str | None
) -> int:
    """Store (source, locator, field, raw) rows of inputs kept but flagged with `flag`; returns how many."""
    columns = ("source", "locator", "field", "raw", "flag")
    return _record_for_asset(warehouse, "input_flags", columns, asset, [(*row, flag) for row in rows], run_id)


def flag_score_text(
    context: AssetExecutionContext,
    warehouse: Warehouse,
    rows: Iterable[dict],
    fields: Sequence[str],
    what: str,
) -> dict[str, Any]:
    """An importing asset's score-text flags (`score_text_flags`): recorded as input flags of the
    asset, warned about in the run's log (`what` names the inputs), and returned as its metadata
    entries (the count and the first five)."""
    flags = score_text_flags(rows, fields)
    asset = context.asset_key.to_user_string()
    record_input_flags(warehouse, asset, SCORE_TEXT_FLAG, flags, context.run_id)
    if flags:
        context.log.warning(f"{len(flags)} {what} hold score-shaped text; see input_flags")
    return {
        SCORE_TEXT_FLAG: len(flags),
        f"{SCORE_TEXT_FLAG}_examples": MetadataValue.json([list(flag) for flag in flags[:5]]),
    }


def record_images(warehouse: Warehouse, images: Iterable) -> None:
    """Upsert StoredImage rows by sha256 (the same bytes are one image however often they come: the
    first row of a sha256 is kept). Inserted as one Arrow table: DuckDB's executemany goes a row at a
    time, about 1.8 ms a row (210K images of an import took minutes; bench/import_scale.py)."""
    first = {}
    for image in images:
        first.setdefault(image.sha256, image)
    if not first:
        return
    rows = list(first.values())
    table = pa.table(
        {
            "sha256": pa.array([i.sha256 for i in rows], pa.string()),
            "path": pa.array([str(i.path) for i in rows], pa.string()),
            "format": pa.array([i.format for i in rows], pa.string()),
            "width": pa.array([i.width for i in rows], pa.int32()),
            "height": pa.array([i.height for i in rows], pa.int32()),
            "bytes": pa.array([i.bytes for i in rows], pa.int64()),
            "note": pa.array([i.note for i in rows], pa.string()),
        }
    )
    with warehouse.transaction() as con:
        con.register("image_rows", table)
        con.execute(
            "INSERT INTO images (sha256, path, format, width, height, bytes, note)"
            " SELECT * FROM image_rows ON CONFLICT DO NOTHING"
        )
        con.unregister("image_rows")


def record_lineage(
    warehouse: Warehouse,
    output: tuple[str, str],
    inputs: Sequence[tuple[str, str]],
    run_id: str | None,
    mlflow_run_id: str | None = None,
) -> None:
    """Edges output(asset, version) <- input(asset, version) for one materialization."""
    with warehouse.transaction() as con:
        con.executemany(
            "INSERT INTO lineage_edges (output_asset, output_version, input_asset, input_version,"
            " dagster_run_id, mlflow_run_id) VALUES (?, ?, ?, ?, ?, ?)",
            [(*output, asset, version, run_id, mlflow_run_id) for asset, version in inputs],
        )
