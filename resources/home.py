"""Where runtime state lives: one folder, chosen by FIRM_HOME, so tests and users can isolate it."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def firm_home() -> Path:
    """The folder holding the warehouse, MLflow store, tiny models, images and exports."""
    home = Path(os.environ.get("FIRM_HOME", REPO_ROOT / ".firm")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def home_path(*parts: str) -> Path:
    """A path under FIRM_HOME whose parent folder exists."""
    path = firm_home().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def warehouse_path() -> str:
    """The DuckDB warehouse file under FIRM_HOME (kept free of Dagster imports: the CLI audits use it)."""
    return str(home_path("warehouse.duckdb"))
