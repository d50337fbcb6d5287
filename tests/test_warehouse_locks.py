"""Readers never crash on a lock: `firm audit` waits (bounded, saying for which lock) while another
process writes, then answers; past the bound it exits with an error naming the lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from warehouse.connection import Warehouse, WarehouseBusy, lock_holder

REPO = Path(__file__).resolve().parents[1]

# Holds the pipeline's exclusive lock in an open transaction that adds one dataset version.
WRITER = """
import sys, time
from pathlib import Path
from warehouse.connection import Warehouse
with Warehouse(Path(sys.argv[1])).transaction() as con:
    con.execute("INSERT INTO dataset_versions (dataset, version, n_samples, params, parquet_path)"
                " VALUES ('firm_edit', 'v1abc', 1, '{}', 'x.parquet')")
    con.execute("INSERT INTO dataset_members VALUES ('firm_edit', 'v1abc', 's1', 'imported', [])")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""
# A notebook: a read-only DuckDB connection, opened as soon as no writer has the file, held until a
# line arrives on stdin (or for the given seconds at most).
NOTEBOOK = """
import select, sys, time, duckdb
while True:
    try:
        con = duckdb.connect(sys.argv[1], read_only=True)
        break
    except duckdb.IOException:
        time.sleep(0.05)
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
con.close()
"""
# Holds DuckDB's own file lock without the project's flock, as the duckdb shell would.
FOREIGN = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _env(home: Path, wait_s: float) -> dict[str, str]:
    return {
        **os.environ,
        "FIRM_HOME": str(home),
        "FIRM_WAREHOUSE_WAIT_S": str(wait_s),
        "PYTHONPATH": str(REPO),
    }


def _hold(script: str, database: Path, seconds: float) -> subprocess.Popen:
    """Start a process holding a lock on `database` for `seconds`; return once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(database), str(seconds)],
        cwd=REPO,
        env=_env(database.parent, 0),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def _audit(home: Path, wait_s: float, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "firm_assets.cli", "audit", *args],
        cwd=REPO,
        env=_env(home, wait_s),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, time.monotonic() - started


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "home" / "warehouse.duckdb"
    Warehouse(path).rows("SELECT 1")  # created and migrated, as any run leaves it
    return path


def _audit_behind(script: str, database: Path) -> tuple[subprocess.CompletedProcess, subprocess.Popen]:
    """`firm audit sample s1`, willing to wait 60 s, while `script` holds a lock for 4 s; both have
    ended on return."""
    holder = _hold(script, database, 4)
    try:
        done, _ = _audit(database.parent, 60, "sample", "s1")
    finally:
        holder.wait(timeout=60)
    return done, holder


def test_audit_waits_for_a_writer_then_answers(database: Path) -> None:
    done, holder = _audit_behind(WRITER, database)
    assert holder.returncode == 0
    assert done.returncode == 0, done.stderr
    assert "sample s1: in 1 dataset version(s)" in done.stdout  # the writer's committed rows
    assert "firm_edit v1abc" in done.stdout
    lock = f"{database}.lock"
    assert done.stderr.strip() == f"waiting up to 60 s for the lock {lock} (a writer holds it)"


def test_audit_gives_up_after_the_bound_naming_the_lock(database: Path) -> None:
    holder = _hold(WRITER, database, 60)
    try:
        done, seconds = _audit(database.parent, 1, "sample", "s1")
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2
    assert f"gave up after 1 s waiting for the lock {database}.lock (a writer holds it)" in done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < 30


def test_audit_waits_for_duckdbs_own_lock_held_outside_the_project(database: Path) -> None:
    done, holder = _audit_behind(FOREIGN, database)
    assert done.returncode == 1, done.stderr  # answered: no such sample in this warehouse
    assert done.stdout.startswith("sample s1: in 0 dataset version(s)")
    assert done.stderr.strip().startswith(
        f"waiting up to 60 s for DuckDB's lock on {database} (held by pid {holder.pid} ("
    )
    assert "import sys, time, duckdb" in done.stderr  # the holder's command line, read from /proc


def test_lock_holder_names_the_process_from_duckdbs_error() -> None:
    message = (
        'IO Error: Could not set lock on file "/x.duckdb": Conflicting lock is held in'
        " /usr/bin/python3.11 (PID {pid}). However, you would be able to open this database in read-only mode"
    )
    mine = lock_holder(message.format(pid=os.getpid()))
    command = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()
    assert mine.startswith(f"pid {os.getpid()} ({command}")  # this process's command line
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    assert (
        lock_holder(message.format(pid=int(gone.stdout))) == f"pid {int(gone.stdout)} (/usr/bin/python3.11)"
    )
    assert lock_holder("IO Error: Could not set lock on file") == "another process"


def _firm_run(home: Path, wait_s: float) -> subprocess.Popen:
    config = home.parent / "run.yaml"
    config.write_text("ops:\n  edit_requests:\n    config:\n      demo_size: 2\n")
    return subprocess.Popen(
        [sys.executable, "-m", "firm_assets.cli", "run", "edit_curation", "-c", str(config)],
        cwd=REPO,
        env={**_env(home, wait_s), "DAGSTER_HOME": str(home / "dagster")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _release(holder: subprocess.Popen) -> None:
    assert holder.stdin is not None
    holder.stdin.write("release\n")
    holder.stdin.flush()
    holder.wait(timeout=60)


def test_a_notebook_before_and_during_a_run_makes_it_wait_then_succeed(firm_home: Path) -> None:
    database = firm_home / "warehouse.duckdb"
    Warehouse(database).rows("SELECT 1")
    before = _hold(NOTEBOOK, database, 600)
    run = _firm_run(firm_home, 120)
    assert run.stdout is not None and run.stderr is not None
    try:
        waited_before = run.stderr.readline()  # the run's first transaction meets the notebook
        _release(before)
        first_step = run.stdout.readline()
        during = _hold(NOTEBOOK, database, 600)  # connects between two of the run's transactions
        waited_during = run.stderr.readline()
        _release(during)
        stdout, stderr = run.communicate(timeout=900)
    finally:
        for process in (before, run):
            process.kill()
    prefix = f"waiting up to 120 s for DuckDB's lock on {database} (held by pid"
    assert waited_before.startswith(f"{prefix} {before.pid} (") and "duckdb" in waited_before
    assert first_step.split()[0] == "edit_requests", first_step
    assert waited_during.startswith(f"{prefix} {during.pid} ("), waited_during
    assert run.returncode == 0, stdout + stderr
    assert ": success" in stdout
    assert "Traceback" not in stderr and "FAILED" not in stdout


def test_a_notebook_held_past_the_bound_fails_the_run_clearly(firm_home: Path) -> None:
    database = firm_home / "warehouse.duckdb"
    Warehouse(database).rows("SELECT 1")
    holder = _hold(NOTEBOOK, database, 120)
    try:
        run = _firm_run(firm_home, 1)
        stdout, stderr = run.communicate(timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 2
    assert (
        f"firm run: gave up after 1 s waiting for DuckDB's lock on {database} (held by pid {holder.pid} ("
        in stderr
    )
    assert "Traceback" not in stderr + stdout


def test_audit_without_a_warehouse_says_so(tmp_path: Path) -> None:
    done, _ = _audit(tmp_path / "empty-home", 1, "dataset", "firm_edit")
    assert done.returncode == 2
    assert f"no warehouse at {tmp_path / 'empty-home' / 'warehouse.duckdb'}" in done.stderr
    assert not (tmp_path / "empty-home" / "warehouse.duckdb").exists()  # a reader creates no database


def test_read_only_warehouse_shares_its_lock_and_refuses_writes(database: Path) -> None:
    first, second = Warehouse(database, read_only=True), Warehouse(database, read_only=True, wait_s=0.5)
    with first.transaction() as con:
        # A second reader gets in while the first is open: the lock is shared.
        assert second.rows("SELECT count(*) FROM dataset_versions") == [(0,)]
        assert con.execute("SELECT count(*) FROM images").fetchall() == [(0,)]
    with pytest.raises(duckdb.InvalidInputException, match="read-only"):
        first.rows("INSERT INTO dataset_members VALUES ('d', 'v', 's', 'x', [])")


def test_reader_in_process_times_out_with_warehouse_busy(database: Path, capsys) -> None:
    holder = _hold(WRITER, database, 60)
    try:
        started = time.monotonic()
        with pytest.raises(WarehouseBusy, match=f"waiting for the lock {database}.lock"):
            Warehouse(database, read_only=True, wait_s=0.3).rows("SELECT 1")
        assert 0.3 <= time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
    assert capsys.readouterr().err.count("waiting up to 0.3 s") == 1
