"""Re-curation triggers: a nightly schedule and a sensor on the requests file's content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from firm_assets.edit.requests import REQUESTS_ENV
from jobs.curation import edit_curation_job

NIGHTLY = "0 3 * * *"
SENSOR_INTERVAL_S = 60

nightly_edit_recuration = ScheduleDefinition(
    name="nightly_edit_recuration",
    job=edit_curation_job,
    cron_schedule=NIGHTLY,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Re-curate the edit chain nightly; only new or changed samples reach a model.",
)


@sensor(job=edit_curation_job, minimum_interval_seconds=SENSOR_INTERVAL_S)
def edit_requests_changed(context: SensorEvaluationContext):
    """Start a re-curation when the file named by FIRM_EDIT_REQUESTS changes content (not mtime)."""
    path = os.environ.get(REQUESTS_ENV, "")
    if not path or not Path(path).is_file():
        return SkipReason(f"${REQUESTS_ENV} does not name a file")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    previous = context.cursor
    if digest == previous:
        return SkipReason("requests file unchanged")
    context.update_cursor(digest)
    # keyed by the transition, so going back to earlier content (A -> B -> A) still runs
    return RunRequest(run_key=f"{previous}->{digest}", tags={"firm/requests_sha256": digest})
