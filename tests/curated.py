"""One curated FIRM_HOME per chain (and one main-job home) per test session, copied into each test
that needs one.

Curating the demo chains and training the critics on the tiny models are the suite's most repeated
costs: a test that checks what a re-run, a changed request or an edited template recomputes needs a
curated home first, and a test of the bench, the RL policies or the critics' registry needs trained
critics; building them is the same run every time. `curate` runs a selection once on a fresh home
(with its progress messages and the compact view's lines kept for the tests that read them);
`relocate` copies that home to a test's own folder. The warehouse and the MLflow store hold absolute
paths (images, exports, artifact locations), so the copy's are rewritten to point into the copy: a
test that writes to its home never touches the session's, and no test reads another's files.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import AssetSelection, DagsterInstance, ExecuteInProcessResult, materialize
from graph_runs import progress_reports

from firm_assets.definitions import ASSETS, CHECKS, build_resources
from firm_assets.run_progress import ProgressView

# What a test's home must not inherit from the machine's environment.
HOME_ENV = (
    "FIRM_BENCH_ROOT",
    "FIRM_EDIT_REQUESTS",
    "FIRM_GEN_PROMPTS",
    "FIRM_PROFILE",
    "FIRM_TEMPLATE_DIR",
    "MLFLOW_TRACKING_URI",
)


def new_home(folder: Path, tiny_model_dir: Path) -> Path:
    """An empty FIRM_HOME under `folder` whose tiny models are the session's (a symlink)."""
    home = folder / "firm-home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny").symlink_to(tiny_model_dir)
    return home


def point_at(home: Path, patch: pytest.MonkeyPatch) -> None:
    """Make `home` the FIRM_HOME of what runs next, with none of the user's inputs or overrides."""
    patch.setenv("FIRM_HOME", str(home))
    for name in HOME_ENV:
        patch.delenv(name, raising=False)


@dataclass(frozen=True)
class Curated:
    """A chain curated once: its home (never written after), the run's result, each step's progress
    reports (`graph_runs.progress_reports`) and the lines the compact view of `firm run` printed."""

    home: Path
    result: ExecuteInProcessResult
    reports: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    view_lines: list[str] = field(default_factory=list)


def curate(
    selection: AssetSelection, folder: Path, tiny_model_dir: Path, run_config: dict[str, Any] | None = None
) -> Curated:
    """Materialize `selection` (assets and their checks) on a fresh home under `folder`."""
    home = new_home(folder, tiny_model_dir)
    with pytest.MonkeyPatch.context() as patch, DagsterInstance.ephemeral() as instance:
        point_at(home, patch)
        result = materialize(
            [*ASSETS, *CHECKS],
            resources=build_resources(),
            selection=selection,
            run_config=run_config or {},
            instance=instance,
        )
        lines: list[str] = []
        view = ProgressView(write=lines.append)
        for entry in instance.all_logs(result.run_id):
            view(entry)
        return Curated(home, result, progress_reports(instance, result.run_id), lines)


def relocate(source: Path, dest: Path) -> Path:
    """Copy the home `source` to `dest` (its tiny-models symlink kept as a link) and rewrite every
    absolute path under `source` that its warehouse and MLflow store hold to the same path under
    `dest`."""
    shutil.copytree(source, dest, symlinks=True)
    old, new = str(source), str(dest)
    warehouse = dest / "warehouse.duckdb"
    if warehouse.is_file():
        _rewrite_duckdb(warehouse, old, new)
    store = dest / "mlflow" / "mlflow.db"
    if store.is_file():
        _rewrite_sqlite(store, old, new)
    return dest


def _rewrite_duckdb(path: Path, old: str, new: str) -> None:
    with duckdb.connect(str(path)) as con:
        columns = con.execute(
            "SELECT c.table_schema, c.table_name, c.column_name, c.data_type"
            " FROM information_schema.columns c"
            " JOIN information_schema.tables t USING (table_schema, table_name)"
            " WHERE t.table_type = 'BASE TABLE' AND c.data_type IN ('VARCHAR', 'VARCHAR[]')"
        ).fetchall()
        for schema, table, column, kind in columns:
            value = f'"{column}"'
            if kind == "VARCHAR":
                rewritten, text = f"replace({value}, $old, $new)", value
            else:
                rewritten = f"list_transform({value}, lambda x: replace(x, $old, $new))"
                text = f"array_to_string({value}, ' ')"
            con.execute(
                f'UPDATE "{schema}"."{table}" SET {value} = {rewritten} WHERE contains({text}, $old)',
                {"old": old, "new": new},
            )


def _rewrite_sqlite(path: Path, old: str, new: str) -> None:
    con = sqlite3.connect(path)
    try:
        tables = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                if kind.upper().startswith(("VARCHAR", "TEXT")):
                    set_new = f'"{column}" = replace("{column}", ?, ?)'
                    con.execute(f'UPDATE "{table}" SET {set_new} WHERE instr("{column}", ?)', (old, new, old))
        con.commit()
    finally:
        con.close()
