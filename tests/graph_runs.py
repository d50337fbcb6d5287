"""Helpers for tests that materialize the real asset graph (no mocks)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetMaterialization,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    materialize,
)

from firm_assets.definitions import ASSETS, CHECKS, build_resources
from firm_assets.run_progress import PROGRESS
from resources.home import warehouse_path
from warehouse.connection import Warehouse

TEMPLATES = Path(__file__).resolve().parent.parent / "firm_assets" / "curation" / "templates"


def home_warehouse() -> Warehouse:
    """The warehouse of the FIRM_HOME the test runs in."""
    return Warehouse(Path(warehouse_path()))


def materialize_group(
    group: str, run_config: dict[str, Any] | None = None, instance: DagsterInstance | None = None
) -> ExecuteInProcessResult:
    """Materialize one asset group and its checks, with resources built from the current environment
    (in `instance` when given, to read the run's log messages back)."""
    return materialize(
        [*ASSETS, *CHECKS],
        resources=build_resources(),
        run_config=run_config or {},
        selection=AssetSelection.groups(group),
        instance=instance,
    )


def progress_reports(instance: DagsterInstance, run_id: str) -> dict[str, list[tuple[int, int, str]]]:
    """Each step's progress messages (`run_progress.progress_message`) as (done, total, unit), in order."""
    reports: dict[str, list[tuple[int, int, str]]] = {}
    for entry in instance.all_logs(run_id):
        found = PROGRESS.match(entry.user_message) if entry.dagster_event is None else None
        if found:
            reports.setdefault(entry.step_key or "", []).append(
                (int(found["done"]), int(found["total"]), found["unit"])
            )
    return reports


def edit_config(requests: Path) -> dict[str, Any]:
    return {"ops": {"edit_requests": {"config": {"requests_path": str(requests)}}}}


def gen_config(*prompt_files: Path) -> dict[str, Any]:
    return {"ops": {"gen_prompts": {"config": {"prompt_files": [str(p) for p in prompt_files]}}}}


def metadata(result: ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """The metadata values of an asset's materialization in this run."""
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.to_user_string() == asset:
            return {key: value.value for key, value in materialization.metadata.items()}
    raise KeyError(asset)


def model_calls(result: ExecuteInProcessResult) -> dict[str, int]:
    """Model calls per stage in this run, read from asset metadata."""
    return stage_figures(result, "model_calls")


def run_model_calls(instance: DagsterInstance, run_id: str) -> dict[str, int]:
    """Model calls per stage of a run recorded in a Dagster instance (a run of another process)."""
    entries = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    return _figure_in(
        (entry.dagster_event.step_materialization_data.materialization for entry in entries), "model_calls"
    )


def stage_figures(result: ExecuteInProcessResult, figure: str) -> dict[str, Any]:
    """One figure of every stage in this run (`model_calls`, `model_seconds`, `wall_seconds`,
    `calls_per_s`), read from asset metadata."""
    return _figure_in(
        (
            event.step_materialization_data.materialization
            for event in result.get_asset_materialization_events()
        ),
        figure,
    )


def _figure_in(materializations: Iterable[AssetMaterialization], figure: str) -> dict[str, Any]:
    """`figure` under the asset's name, `<stage>_<figure>` (assets running several stages) under the
    stage prefix."""
    values = {}
    for materialization in materializations:
        for key, value in materialization.metadata.items():
            if key == figure:
                values[materialization.asset_key.to_user_string()] = value.value
            elif key.endswith(f"_{figure}"):
                values[key.removesuffix(f"_{figure}")] = value.value
    return values


def write_requests(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def edited_template(folder: Path, template_id: str, old: str, new: str) -> Path:
    """Copy a packaged template into `folder` (for FIRM_TEMPLATE_DIR) with one phrase replaced and its
    version bumped, as a user editing a template would; fails if the phrase is not in the template."""
    text = (TEMPLATES / f"{template_id}.yaml").read_text()
    assert old in text, f"{old!r} is not in {template_id}.yaml"
    version = int(re.search(r"^version: (\d+)$", text, re.MULTILINE).group(1))
    text = re.sub(r"^version: \d+$", f"version: {version + 1}", text, count=1, flags=re.MULTILINE)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{template_id}.yaml").write_text(text.replace(old, new))
    return folder


def materialize_with_edited_template(
    group: str, monkeypatch: pytest.MonkeyPatch, folder: Path, template_id: str, old: str, new: str
) -> ExecuteInProcessResult:
    """Materialize `group` again after a user's edit of one template (see `edited_template`)."""
    monkeypatch.setenv("FIRM_TEMPLATE_DIR", str(edited_template(folder, template_id, old, new)))
    return materialize_group(group)
