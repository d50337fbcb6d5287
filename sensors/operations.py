"""Operations sensors: new bench labels or a new registered critic re-run the bench; failed runs are
recorded in the warehouse (`run_failures`) so they can be queried next to what the runs produced."""

from __future__ import annotations

import hashlib
import json
import os
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

SENSOR_INTERVAL_S = 60
# The registered model names are the critic assets' names (firm_assets/critics/training.py).
CRITIC_MODELS = ("firm_edit_critic", "firm_gen_critic")
BENCH_RESULTS = AssetKey("bench_results")


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


def latest_versions(tracking: TrackingResource, names: tuple[str, ...]) -> dict[str, int]:
    """The highest registered version of each model in `names` that has one."""
    client = tracking.client()
    found = {}
    for name in names:
        versions = [int(v.version) for v in client.search_model_versions(f"name = '{name}'")]
        if versions:
            found[name] = max(versions)
    return found


def new_critic_versions(seen: dict[str, int], latest: dict[str, int]) -> dict[str, int]:
    """The models whose latest version is above the one already seen."""
    return {name: version for name, version in latest.items() if version > seen.get(name, 0)}


@sensor(job=bench_job, minimum_interval_seconds=SENSOR_INTERVAL_S)
def critic_registered(
    context: SensorEvaluationContext, tracking: TrackingResource
) -> RunRequest | SkipReason:
    """Run bench_results when the MLflow registry holds a critic version above the highest seen (the
    cursor); the first tick only records the versions there are."""
    latest = latest_versions(tracking, CRITIC_MODELS)
    seen = json.loads(context.cursor) if context.cursor else None
    context.update_cursor(json.dumps({**(seen or {}), **latest}, sort_keys=True))
    if seen is None:
        return SkipReason(f"first tick: recorded the registered critic versions {latest}; no run")
    new = new_critic_versions(seen, latest)
    if not new:
        return SkipReason("no new critic version in the registry")
    key = ",".join(f"{name}:v{version}" for name, version in sorted(new.items()))
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
    rows = failure_rows(context)
    with warehouse.get().transaction() as con:
        con.execute("DELETE FROM run_failures WHERE run_id = ?", [context.dagster_run.run_id])
        con.executemany("INSERT INTO run_failures (run_id, job, step, error) VALUES (?, ?, ?, ?)", rows)
