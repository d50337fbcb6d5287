"""Inbox sensors: each new or changed file in an inbox folder becomes a dynamic partition and one run.

The cursor maps file name -> content hash already requested; the run key is name@hash, so a file is
imported once per content even if the cursor is lost, and a changed file is imported again.
"""

from __future__ import annotations

import json

from dagster import (
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from firm_assets.curation.inbox import FILE_NAME, Inbox, inbox_dir
from firm_assets.curation.versioning import file_digest
from firm_assets.edit.inbox import EDIT_INBOX
from firm_assets.gen.inbox import GEN_INBOX
from jobs.curation import edit_inbox_job, gen_inbox_job

SENSOR_INTERVAL_S = 30


def inbox_run_key(name: str, digest: str) -> str:
    """Run key per inbox file and content, so each file version runs once."""
    return f"{name}@{digest}"


def evaluate_inbox(context: SensorEvaluationContext, inbox: Inbox) -> SensorResult | SkipReason:
    """New partitions and run requests for the files whose content the cursor has not seen."""
    folder = inbox_dir(inbox)
    if not folder.is_dir():
        return SkipReason(f"no inbox folder at {folder}")
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(inbox.partitions.name))
    new_keys, requests, refused = [], [], []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in inbox.suffixes:
            continue
        if not FILE_NAME.match(path.name):
            refused.append(path.name)
            continue
        digest = file_digest(path)
        if seen.get(path.name) == digest:
            continue
        seen[path.name] = digest
        if path.name not in known:
            new_keys.append(path.name)
        requests.append(
            RunRequest(
                run_key=inbox_run_key(path.name, digest),
                partition_key=path.name,
                tags={"firm/inbox": inbox.name, "firm/inbox_sha256": digest},
            )
        )
    if refused:
        context.log.warning(f"{inbox.name} inbox: file names outside [A-Za-z0-9._-] ignored: {refused}")
    if not requests:
        return SkipReason(
            f"{inbox.name} inbox: no new or changed files" + (f"; ignored {refused}" if refused else "")
        )
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[inbox.partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(seen, sort_keys=True),
    )


def inbox_sensor(inbox: Inbox, job_name: str) -> SensorDefinition:
    """Builds the sensor that watches one chain's inbox folder."""

    @sensor(
        job_name,
        name=f"{inbox.name}_inbox_files",
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        description=f"Each new or changed file in the {inbox.name} inbox becomes a partition and one "
        "import run.",
    )
    def _sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        return evaluate_inbox(context, inbox)

    return _sensor


edit_inbox_files = inbox_sensor(EDIT_INBOX, edit_inbox_job.name)
gen_inbox_files = inbox_sensor(GEN_INBOX, gen_inbox_job.name)
