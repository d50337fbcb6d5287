"""Warehouse writes shared by both chains: quarantine rows, flagged inputs, image rows and lineage edges."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from firm_assets.curation.score_text import has_score_text
from warehouse.connection import Warehouse


def record_quarantine(
    warehouse: Warehouse, asset: str, rows: Sequence[tuple[str, str, str, str]], run_id: str | None
) -> int:
    """Store (source, locator, raw, reason) rows; returns how many."""
    if rows:
        with warehouse.transaction() as con:
            con.executemany(
                "INSERT INTO quarantine (asset, source, locator, raw, reason, dagster_run_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(asset, source, locator, raw, reason, run_id) for source, locator, raw, reason in rows],
            )
    return len(rows)


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
    if rows:
        with warehouse.transaction() as con:
            con.executemany(
                "INSERT INTO input_flags (asset, source, locator, field, raw, flag, dagster_run_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(asset, source, locator, field, raw, flag, run_id) for source, locator, field, raw in rows],
            )
    return len(rows)


def record_images(warehouse: Warehouse, images: Iterable) -> None:
    """Upsert StoredImage rows by sha256 (the same bytes are one image however often they come)."""
    rows = [(i.sha256, str(i.path), i.format, i.width, i.height, i.bytes, i.note) for i in images]
    if rows:
        with warehouse.transaction() as con:
            con.executemany(
                "INSERT INTO images (sha256, path, format, width, height, bytes, note)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                rows,
            )


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
