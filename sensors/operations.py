"""Operations sensors: new bench labels or a new registered critic re-run the bench; failed runs are
recorded in the warehouse (`run_failures`) so they can be queried next to what the runs produced.

A critic version registered in MLflow by hand (not by a critic asset) has no warehouse lineage: no
training dataset, so bench_results' contamination gate and constant baseline have nothing to check
it against, and it is not benched. The registry sensor names such versions instead of passing over
them in silence."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from firm_assets.benchmark.importer import ITEMS_FILE, LABELS_FILE, SIDE_DIRS
from firm_assets.benchmark.items import BENCH_ENV
from jobs.curation import bench_job
from resources.tracking import TrackingResource
from resources.warehouse_resource import WarehouseResource
from sensors.changes import on_content_change
from warehouse.connection import Warehouse, WarehouseBusy

SENSOR_INTERVAL_S = 60
# The registered model names are the critic assets' names (firm_assets/critics/assets.py).
CRITIC_MODELS = ("firm_edit_critic", "firm_gen_critic")
# The tag a critic asset puts on each version it registers (firm_assets/critics/launch.py).
ASSET_TAG = "critic_version"
BENCH_RESULTS = AssetKey("bench_results")
# How long the registry sensor waits for a warehouse a run is writing before trying next tick.
WAREHOUSE_WAIT_S = 5.0


def bench_files(root: Path) -> list[Path]:
    """The item and human-label files of every bench side present under `root`."""
    return [
        root / folder / name
        for folders in SIDE_DIRS.values()
        for folder in folders
        for name in (ITEMS_FILE, LABELS_FILE)
        if (root / folder / name).is_file()
    ]


def bench_digest(root: Path) -> str:
    """One hash over the bench files' names (relative to root) and contents."""
    digest = hashlib.sha256()
    for path in bench_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@sensor(job=bench_job, minimum_interval_seconds=SENSOR_INTERVAL_S)
def bench_labels_changed(context: SensorEvaluationContext) -> RunRequest | SkipReason:
    """Re-import the bench and re-evaluate bench_results when the items or human labels under
    FIRM_BENCH_ROOT change (the demo bench never does); the first tick only records them."""
    root = Path(os.environ.get(BENCH_ENV, ""))
    if not os.environ.get(BENCH_ENV) or not bench_files(root):
        return SkipReason(f"${BENCH_ENV} names no bench folder with {ITEMS_FILE} files")
    return on_content_change(context, bench_digest(root), "bench items and labels", "firm/bench_sha256")


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and whether an asset or a person registered it."""

    name: str
    version: int
    by_asset: bool  # registered by a critic asset (it carries ASSET_TAG), not by hand

    def __str__(self) -> str:
        return f"{self.name}:v{self.version}"


def registered_versions(tracking: TrackingResource, names: tuple[str, ...]) -> list[RegisteredVersion]:
    """Every registered version of the models in `names`."""
    client = tracking.client()
    return [
        RegisteredVersion(name, int(v.version), ASSET_TAG in (v.tags or {}))
        for name in names
        for v in client.search_model_versions(f"name = '{name}'")
    ]


def lineage_versions(warehouse: Warehouse) -> set[tuple[str, int]]:
    """(registered model, version) of every critic version with a warehouse row; none before the
    first run has made a warehouse."""
    try:
        rows = warehouse.rows(
            "SELECT registered_model, model_version FROM critics WHERE model_version IS NOT NULL"
        )
    except FileNotFoundError:
        return set()
    return {(name, int(version)) for name, version in rows}


def new_versions(
    registry: list[RegisteredVersion], seen: dict[str, int], pending: list[str]
) -> list[RegisteredVersion]:
    """The versions above the highest seen per model, and those still waiting for their lineage."""
    return [v for v in registry if v.version > seen.get(v.name, 0) or str(v) in pending]


def sort_versions(
    versions: list[RegisteredVersion], lineage: set[tuple[str, int]]
) -> tuple[list[RegisteredVersion], list[RegisteredVersion], list[RegisteredVersion]]:
    """(to bench, waiting, without lineage): a version with a warehouse row is benched; one a critic
    asset registered whose row is not written yet waits (the asset writes it just after registering);
    one registered by hand has no lineage and cannot be benched."""
    bench = [v for v in versions if (v.name, v.version) in lineage]
    waiting = [v for v in versions if (v.name, v.version) not in lineage and v.by_asset]
    unbenchable = [v for v in versions if (v.name, v.version) not in lineage and not v.by_asset]
    return bench, waiting, unbenchable


def _names(versions: list[RegisteredVersion]) -> str:
    return ", ".join(str(v) for v in versions)


@sensor(job=bench_job, minimum_interval_seconds=SENSOR_INTERVAL_S)
def critic_registered(
    context: SensorEvaluationContext, tracking: TrackingResource, warehouse: WarehouseResource
) -> RunRequest | SkipReason:
    """Run bench_results when the MLflow registry holds a critic version above the highest seen and
    its lineage is in the warehouse; versions registered by hand are named, not benched. The cursor
    keeps the highest version seen per model and the versions waiting for their warehouse row; the
    first tick only records the versions there are."""
    registry = registered_versions(tracking, CRITIC_MODELS)
    latest: dict[str, int] = {}
    for v in registry:
        latest[v.name] = max(v.version, latest.get(v.name, 0))
    state = json.loads(context.cursor) if context.cursor else None
    if state is not None and "seen" not in state:  # a cursor from before pending versions: {name: seen}
        state = {"seen": state, "pending": []}
    if state is None:
        context.update_cursor(json.dumps({"seen": latest, "pending": []}, sort_keys=True))
        return SkipReason(f"first tick: recorded the registered critic versions {latest}; no run")
    found = new_versions(registry, state["seen"], state["pending"])
    if not found:
        return SkipReason("no new critic version in the registry")
    try:
        lineage = lineage_versions(
            Warehouse(Path(warehouse.get().path), read_only=True, wait_s=WAREHOUSE_WAIT_S)
        )
    except WarehouseBusy as error:  # the cursor stays: the same versions are looked at next tick
        return SkipReason(f"new critic versions {_names(found)}, but the warehouse is busy: {error}")
    bench, waiting, unbenchable = sort_versions(found, lineage)
    seen = {**state["seen"], **latest}
    context.update_cursor(json.dumps({"seen": seen, "pending": [str(v) for v in waiting]}, sort_keys=True))
    notes = []
    if unbenchable:
        notes.append(
            f"not benched: {_names(unbenchable)} registered without a critic asset, so the warehouse has no"
            " lineage (training dataset) for them to check for bench contamination"
        )
    if waiting:
        notes.append(f"waiting for the warehouse lineage of {_names(waiting)} (looked at again next tick)")
    if not bench:
        return SkipReason("; ".join(notes))
    for note in notes:
        context.log.warning(note)
    key = ",".join(sorted(str(v) for v in bench))
    return RunRequest(run_key=key, asset_selection=[BENCH_RESULTS], tags={"firm/new_critics": key})


def failure_rows(context: RunFailureSensorContext) -> list[tuple[str, str, str | None, str]]:
    """(run id, job, step, error) per failed step, or one row with no step when none failed."""
    run = context.dagster_run
    rows = [
        (run.run_id, run.job_name, event.step_key, _error(event) or event.message or "")
        for event in context.get_step_failure_events()
    ]
    return rows or [(run.run_id, run.job_name, None, context.failure_event.message or "run failed")]


def _error(event) -> str | None:
    """The user's exception, not Dagster's wrapper around it: the innermost cause."""
    error = event.step_failure_data.error
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error else None  # the message starts with the class name


@run_failure_sensor(
    default_status=DefaultSensorStatus.RUNNING,
    description="Record each failed run's failed steps and errors in the warehouse's run_failures table.",
)
def record_run_failures(context: RunFailureSensorContext, warehouse: WarehouseResource) -> None:
    """Keeps each failed run's failing steps in the warehouse for the operations summary."""
    rows = failure_rows(context)
    with warehouse.get().transaction() as con:
        con.execute("DELETE FROM run_failures WHERE run_id = ?", [context.dagster_run.run_id])
        con.executemany("INSERT INTO run_failures (run_id, job, step, error) VALUES (?, ?, ?, ?)", rows)
