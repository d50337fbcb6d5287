"""Re-curation triggers: a nightly schedule and a sensor on the requests file's content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dagster import (
    DefaultScheduleStatus,
    ScheduleDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from firm_assets.edit.requests import REQUESTS_ENV
from jobs.curation import edit_curation_job
from sensors.changes import on_content_change

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
    """Start a re-curation when the file named by FIRM_EDIT_REQUESTS changes content (not mtime).
    The first tick only records the content, so switching the sensor on launches nothing."""
    path = os.environ.get(REQUESTS_ENV, "")
    if not path or not Path(path).is_file():
        return SkipReason(f"${REQUESTS_ENV} does not name a file")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return on_content_change(context, digest, "requests file", "firm/requests_sha256")
