"""`firm run`: run config from YAML, the compact progress view, and the sweep that marks runs whose
process died as failed. The pure parts are unit-tested; the rest through the real CLI."""

import fcntl
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runs import firm
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, EventLogEntry

from firm_assets.cli import read_run_config
from firm_assets.run_progress import (
    ProgressReporter,
    ProgressView,
    _Step,
    eta_seconds,
    failure_reason,
    metadata_totals,
    progress_message,
    report_due,
    with_console_level,
)
from firm_assets.run_sweep import HOST_TAG, PID_START_TAG, PID_TAG, owner_gone, owner_tags
from warehouse.connection import WarehouseBusy

REPO = Path(__file__).resolve().parent.parent
HOST = socket.gethostname()


def test_eta_from_the_rate_since_the_first_report_once_a_tenth_is_done() -> None:
    # 4 done at the first report, 10 now, 6 s later: 1 unit/s, 50 left
    assert eta_seconds(done=10, total=60, first_done=4, since_first_s=6.0) == 50.0
    assert eta_seconds(done=14, total=100, first_done=4, since_first_s=6.0) == pytest.approx(51.6)
    assert eta_seconds(done=12, total=100, first_done=4, since_first_s=6.0) is None  # 8 since: under a tenth
    assert eta_seconds(done=4, total=100, first_done=4, since_first_s=0.0) is None  # the first report itself
    assert eta_seconds(done=100, total=100, first_done=4, since_first_s=6.0) is None  # nothing left


def test_eta_is_not_inflated_by_model_loading() -> None:
    """A step loads its model for 100 s, then does 10 units each 10 s: the old estimate (rate over the
    step's whole time) said 480 s left at 20/100 when 80 s were; the view now says 80 s."""
    lines: list[str] = []
    view = ProgressView(write=lines.append)
    view.steps["edit_scores"] = _Step(started=0.0)
    for done in range(10, 101, 10):
        view(_message("edit_scores", progress_message(done, 100, "model calls"), 100.0 + done))
    etas = [line.split("ETA ")[1] if "ETA" in line else None for line in lines]
    assert etas == [None, "80s", "70s", "60s", "50s", "40s", "30s", "20s", "10s", None]
    view(_message("edit_scores", progress_message(1, 1, "model calls"), 300.0))  # the canary: a new stage
    view(_message("edit_scores", progress_message(5, 50, "model calls"), 400.0))
    view(_message("edit_scores", progress_message(10, 50, "model calls"), 405.0))
    assert lines[-3:] == [
        "  edit_scores                  1/1 model calls",
        "  edit_scores                  5/50 model calls",
        "  edit_scores                  10/50 model calls  ETA 40s",
    ]


def test_report_due_each_tenth_every_interval_and_at_the_end() -> None:
    assert report_due(done=1000, total=1000, last_done=990, since_last_s=0.0, every_s=30.0)  # the end
    assert report_due(done=100, total=1000, last_done=0, since_last_s=0.0, every_s=30.0)  # a tenth
    assert not report_due(done=99, total=1000, last_done=0, since_last_s=29.9, every_s=30.0)
    assert report_due(done=1, total=1000, last_done=0, since_last_s=30.0, every_s=30.0)  # time
    assert not report_due(done=5, total=1000, last_done=5, since_last_s=60.0, every_s=30.0)  # nothing new


def test_progress_reporter_logs_batches_of_a_small_stage_and_tenths_of_a_large_one() -> None:
    now = [0.0]
    small: list[str] = []
    reporter = ProgressReporter(20, "model calls", small.append, clock=lambda: now[0])
    for _ in range(3):
        reporter.advance(8)  # the last batch is larger than what is left: the count stops at the total
    assert small == [progress_message(n, 20, "model calls") for n in (8, 16, 20)]

    large: list[str] = []
    reporter = ProgressReporter(1000, "model calls", large.append, clock=lambda: now[0])
    for _ in range(125):
        reporter.advance(8)
    # the first batch, then whenever a tenth (100) is done since the last message, then the end
    expected = [8, 112, 216, 320, 424, 528, 632, 736, 840, 944, 1000]
    assert large == [progress_message(n, 1000, "model calls") for n in expected]
    slow: list[str] = []
    reporter = ProgressReporter(50, "updates", slow.append, clock=lambda: now[0])
    reporter.advance()
    now[0] += 29.0
    reporter.advance()  # under a tenth and under 30 s since the first message: not reported
    now[0] += 1.0
    reporter.advance()
    assert slow == ["progress 1/50 updates", "progress 3/50 updates"]


def test_metadata_totals_sum_stage_prefixed_model_figures() -> None:
    metadata = {"rows": 9, "planner_model_calls": 4, "model_calls": 2, "cache_hits": 1, "judge_rows": 27}
    assert metadata_totals(metadata) == {"rows": 9, "cache_hits": 1, "model_calls": 6}
    assert metadata_totals({"source": "x", "flag": True}) == {}


def test_console_level_only_when_config_leaves_loggers_alone() -> None:
    config = {"ops": {"a": {"config": {"n": 1}}}}
    assert with_console_level(config, verbose=False)["loggers"] == {
        "console": {"config": {"log_level": "CRITICAL"}}
    }
    assert with_console_level(config, verbose=True)["loggers"]["console"]["config"]["log_level"] == "DEBUG"
    own = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    assert with_console_level(own, verbose=True) == own


def _message(step: str, text: str, at: float, level: int = logging.INFO) -> EventLogEntry:
    return EventLogEntry(None, level, text, "run", at, step, "job", None)


def test_progress_view_prints_progress_and_warnings() -> None:
    lines: list[str] = []
    view = ProgressView(write=lines.append)
    view.steps["edit_scores"] = _Step(started=100.0)
    view(_message("edit_scores", progress_message(5, 20, "model calls"), 110.0))
    view(_message("edit_scores", progress_message(10, 20, "model calls"), 115.0))
    view(_message("edit_scores", "an ordinary log line", 111.0))
    view(_message("other_step", progress_message(1, 2, "model calls"), 111.0))  # step never started
    view(_message("edit_requests", "2 lines quarantined", 112.0, level=logging.WARNING))
    assert lines == [
        "  edit_scores                  5/20 model calls",
        "  edit_scores                  10/20 model calls  ETA 10s",
        "  edit_requests                warning: 2 lines quarantined",
    ]


def test_failure_reason_is_the_innermost_cause_in_one_line() -> None:
    from dagster._utils.error import serializable_error_info_from_exc_info

    try:
        try:
            raise WarehouseBusy("gave up after 1 s waiting for DuckDB's lock on w.duckdb (held by pid 7 (x))")
        except WarehouseBusy as busy:
            raise RuntimeError("Error occurred while executing op edit_scores") from busy
    except RuntimeError:
        error = serializable_error_info_from_exc_info(sys.exc_info())
    assert failure_reason(error) == (
        "warehouse.connection.WarehouseBusy: gave up after 1 s waiting for DuckDB's lock on w.duckdb"
        " (held by pid 7 (x))"
    )


def test_step_line() -> None:
    step = _Step(
        started=0.0, assets=["edit_scores"], totals={"rows": 9, "model_calls": 18, "model_seconds": 3.26}
    )
    line = ProgressView.step_line("edit_scores", step, 4.0, failed=False)
    assert line.split() == ["edit_scores", "rows=9", "model_calls=18", "model_seconds=3.3", "4.0s"]
    assert ProgressView.step_line("edit_scores", _Step(0.0), 1.0, failed=True).endswith("1.0s  FAILED")


def test_read_run_config(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("ops:\n  edit_requests:\n    config:\n      demo_size: 2\n")
    assert read_run_config(str(good)) == {"ops": {"edit_requests": {"config": {"demo_size": 2}}}}
    (tmp_path / "empty.yaml").write_text("")
    assert read_run_config(str(tmp_path / "empty.yaml")) == {}
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        read_run_config(str(tmp_path / "list.yaml"))
    (tmp_path / "bad.yaml").write_text("ops: [\n")
    with pytest.raises(ValueError, match="cannot read run config"):
        read_run_config(str(tmp_path / "bad.yaml"))
    with pytest.raises(ValueError, match="cannot read run config"):
        read_run_config(str(tmp_path / "missing.yaml"))


def test_owner_gone() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(done.stdout)
    assert owner_gone({PID_TAG: str(dead), HOST_TAG: HOST}, HOST) == dead
    mine = owner_tags()
    assert mine[PID_TAG] == str(os.getpid()) and mine[PID_START_TAG]
    assert owner_gone(mine, HOST) is None
    assert owner_gone({**mine, PID_START_TAG: "1"}, HOST) == os.getpid()  # the pid now names another process
    assert owner_gone({PID_TAG: str(dead), HOST_TAG: "elsewhere"}, HOST) is None  # cannot tell from here
    assert owner_gone({}, HOST) is None


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "FIRM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}


def _firm(home: Path, *args: str) -> subprocess.CompletedProcess:
    return firm(*args, env=_env(home), timeout=900)


# Every line a quiet `firm run` may print: its step, progress and check lines (indented), the run's
# verdict and the summary's labelled lines. A library's line (a tqdm bar, a warning, a banner, a log
# record) matches none of them.
PROJECT_LINE = re.compile(
    r"^(  \S.*|run [0-9a-f-]{36}: (success|FAILED)|FIRM-Bench .*"
    r"|(FIRM_HOME|DuckDB warehouse|MLflow store|Dagster UI|MLflow UI): .*)$"
)


def test_help_lists_the_jobs_and_an_unknown_job_is_refused_at_once(tmp_path: Path) -> None:
    helped = _firm(tmp_path / "home", "--help")
    assert helped.returncode == 0
    jobs = helped.stdout.split("jobs (firm run JOB):\n")[1].split()
    assert {"main", "edit_curation", "gen_curation", "rl", "bench", "edit_inbox", "gen_inbox"} <= set(jobs)
    refused = _firm(tmp_path / "home", "run", "nosuchjob")
    assert refused.returncode == 2
    assert "invalid choice: 'nosuchjob'" in refused.stderr and "'gen_curation'" in refused.stderr
    assert not (tmp_path / "home").exists()  # refused before anything was set up


def test_run_config_and_compact_output(firm_home: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("ops:\n  edit_requests:\n    config:\n      demo_size: 2\n")
    compact = _firm(firm_home, "run", "edit_curation", "-c", str(config))
    output = compact.stdout + compact.stderr
    assert compact.returncode == 0, output
    assert "DEBUG" not in output
    foreign = [line for line in output.splitlines() if line and not PROJECT_LINE.match(line)]
    assert foreign == [], output  # no tqdm bar, library warning, telemetry banner or log record
    assert "it/s" not in output and "Warning" not in output
    lines = {line.split()[0]: line for line in compact.stdout.splitlines() if line.startswith("  ")}
    assert "rows=2" in lines["edit_requests"].split()
    assert "model_calls=" in lines["edit_scores"] and lines["edit_scores"].endswith("s")
    with DagsterInstance.from_config(str(firm_home / "dagster")) as instance:
        event = instance.get_latest_materialization_event(AssetKey("edit_requests"))
        assert "edit-2" in event.asset_materialization.metadata["source"].value  # the config's demo set

    verbose = _firm(firm_home, "run", "edit_curation", "-c", str(config), "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert "DEBUG" in verbose.stdout + verbose.stderr
    assert "cache_hits=" in verbose.stdout  # the second run answers from the cache

    rejected = _firm(firm_home, "run", "edit_curation", "-c", str(tmp_path / "missing.yaml"))
    assert rejected.returncode == 2 and "cannot read run config" in rejected.stderr


def _started_run(home: Path, timeout_s: float = 300) -> str:
    """The run's id once the `firm run` process has it STARTED; the instance is opened under the lock
    the CLI holds while it creates the storage."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (home / "dagster" / "history" / "runs.db").exists():
            with open(home / "dagster" / "instance.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                with DagsterInstance.from_config(str(home / "dagster")) as instance:
                    runs = instance.get_runs()
            if runs and runs[0].status == DagsterRunStatus.STARTED:
                return runs[0].run_id
        time.sleep(0.5)
    raise AssertionError("the run never reached STARTED")


def test_sweep_marks_a_killed_run_failed(firm_home: Path) -> None:
    run = subprocess.Popen(
        [sys.executable, "-m", "firm_assets.cli", "run", "edit_curation"],
        cwd=REPO,
        env=_env(firm_home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        run_id = _started_run(firm_home)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    with DagsterInstance.from_config(str(firm_home / "dagster")) as instance:
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED  # what Dagster leaves

    swept = _firm(firm_home, "runs", "sweep")
    assert swept.returncode == 0, swept.stderr
    assert f"run {run_id} (edit_curation), its process {run.pid} is gone" in swept.stdout
    with DagsterInstance.from_config(str(firm_home / "dagster")) as instance:
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
        failure = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
        assert len(failure) == 1 and f"process {run.pid} " in failure[0].dagster_event.message
    again = _firm(firm_home, "runs", "sweep")
    assert "0 dead run(s) marked failed" in again.stdout
