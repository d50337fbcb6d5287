"""Real processes against one warehouse: concurrent runs, and a run killed with SIGKILL mid-stage."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance
from graph_runs import materialize_group, model_calls, run_model_calls

from resources.home import warehouse_path
from warehouse.connection import Warehouse

REPO = Path(__file__).resolve().parent.parent
WRITER = """
import sys
from pathlib import Path
from warehouse.connection import Warehouse
wh = Warehouse(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    with wh.transaction() as con:
        con.execute("INSERT INTO quarantine (asset, source, locator, reason) VALUES ('t', ?, ?, 'r')",
                    [sys.argv[2], str(i)])
        n = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
"""


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "FIRM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}


def _firm_run(home: Path, job: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "firm_assets.cli", "run", job],
        cwd=REPO,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_concurrent_writers_never_conflict(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"p{i}", "40"], cwd=REPO) for i in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    counts = Warehouse(path).query(
        "SELECT source, count(*) AS n FROM quarantine GROUP BY source ORDER BY source"
    )
    assert counts["n"].to_list() == [40, 40, 40, 40]


def test_two_concurrent_materializations(firm_home: Path) -> None:
    runs = [_firm_run(firm_home, "edit_curation") for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert all("success" in output for output in outputs)
    with DagsterInstance.from_config(str(firm_home / "dagster")) as instance:
        records = instance.get_run_records()
        assert len(records) == 2
        # the runs really ran at the same time: each started before the other ended
        assert max(r.start_time for r in records) < min(r.end_time for r in records)
        calls = {
            r.dagster_run.run_id: sum(run_model_calls(instance, r.dagster_run.run_id).values())
            for r in records
        }
    wh = Warehouse(Path(warehouse_path()))
    committed = dict(wh.rows("SELECT dagster_run_id, count(*) FROM inference_cache GROUP BY ALL"))
    one_run = sum(committed.values())  # what one run alone asks on a fresh FIRM_HOME: each key once
    # the two shared the work through their leases: together at most 1.1x one run's calls, every
    # cached answer came from one of them, and each stored at most what it asked
    assert one_run <= sum(calls.values()) <= 1.1 * one_run, (calls, one_run)
    assert set(committed) <= set(calls)
    assert all(committed[run_id] <= calls[run_id] for run_id in committed), (committed, calls)
    assert wh.rows("SELECT count(*) FROM work_claims")[0][0] == 0
    candidates = wh.query("SELECT * FROM assets.edit_candidates")
    captions = wh.rows("SELECT count(*) FROM inference_cache WHERE stage = 'difference_captions'")[0][0]
    assert captions == candidates["image_sha"].n_unique()
    # each run wrote its own complete outputs, and they are the same rows
    for asset in ("edit_candidates", "difference_captions", "edit_scores"):
        rows = wh.query(f"SELECT * FROM asset_rows.{asset}")
        per_run = [
            part.drop("_dagster_run_id").sort(part.columns[0]).rows()
            for part in rows.partition_by("_dagster_run_id")
        ]
        assert len(per_run) == 2 and per_run[0] == per_run[1] and per_run[0], asset
    # a third run finds everything committed by the two
    assert set(model_calls(materialize_group("edit")).values()) == {0}


def test_killed_run_resumes_without_repeating_committed_calls(firm_home: Path) -> None:
    run = _firm_run(firm_home, "edit_curation")
    wh = Warehouse(firm_home / "warehouse.duckdb")
    committed = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if (firm_home / "warehouse.duckdb").exists():
            committed = wh.rows("SELECT count(*) FROM inference_cache WHERE stage = 'difference_captions'")[
                0
            ][0]
            if committed:
                break
        time.sleep(0.05)
    assert run.poll() is None, "the run finished before it could be killed"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    before = wh.query("SELECT cache_key, dagster_run_id, created_at FROM inference_cache")
    assert before.height >= committed > 0

    result = materialize_group("edit")
    assert result.success
    after = wh.query("SELECT cache_key, dagster_run_id, created_at FROM inference_cache")
    # nothing committed was lost or recomputed: the killed run's rows are still its own
    assert before.join(after, on="cache_key", how="anti").height == 0
    kept = after.join(before, on=["cache_key", "dagster_run_id", "created_at"])
    assert kept.height == before.height
    new_calls = sum(model_calls(result).values())
    assert new_calls == after.height - before.height
    # the kill left work to do, and the re-run did only that, not a full run's calls
    assert 0 < new_calls < after.height
