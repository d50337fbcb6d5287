"""Runs whose process died are marked failed instead of staying "Started" forever.

`firm run` executes a job in its own process, outside any run launcher, so Dagster's run monitoring
(a daemon watching launched run workers) never looks at it: a run killed with SIGKILL or lost with
its machine keeps its STARTED status. Each such run is tagged at launch with the pid, the pid's
start time (a reused pid names another process) and the host; the sweep reports a run failed, the
way Dagster's own monitor does, once that process is gone."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resources.processes import process_alive, process_start

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun

PID_TAG = "firm/pid"
PID_START_TAG = "firm/pid_start"
HOST_TAG = "firm/host"


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """Run tags naming the process that executes the run (this one unless `pid` is given)."""
    pid = os.getpid() if pid is None else pid
    return {PID_TAG: str(pid), PID_START_TAG: process_start(pid), HOST_TAG: socket.gethostname()}


def owner_gone(tags: dict[str, str], host: str) -> int | None:
    """The owning pid when the tags name a process of `host` that no longer runs (or whose pid now
    belongs to a later process); None when it still runs, or when the tags cannot tell (no pid tag,
    another host's process)."""
    if PID_TAG not in tags or tags.get(HOST_TAG) != host:
        return None
    pid = int(tags[PID_TAG])
    recorded_start = tags.get(PID_START_TAG, "")
    if not process_alive(pid):
        return pid
    if recorded_start and process_start(pid) not in ("", recorded_start):
        return pid
    return None


@dataclass(frozen=True)
class SweptRun:
    """A run whose process died, found and marked failed by the sweep."""

    run_id: str
    job_name: str
    pid: int


def sweep_dead_runs(instance: DagsterInstance) -> list[SweptRun]:
    """Report every STARTING or STARTED run of this host whose owning process is gone as failed."""
    from dagster import DagsterRunStatus, RunsFilter

    host = socket.gethostname()
    swept = []
    active = RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
    for run in instance.get_runs(filters=active):
        pid = owner_gone(dict(run.tags), host)
        if pid is not None:
            _report_failed(instance, run, pid)
            swept.append(SweptRun(run.run_id, run.job_name, pid))
    return swept


def _report_failed(instance: DagsterInstance, run: DagsterRun, pid: int) -> None:
    message = f"process {pid} on {run.tags[HOST_TAG]} that ran this run is gone (killed or crashed)"
    instance.report_run_failed(run, message=f"{message}; marked failed by firm's dead-run sweep")
