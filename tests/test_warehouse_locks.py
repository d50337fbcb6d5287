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

from warehouse.connection import Warehouse, WarehouseBusy

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


def test_audit_waits_for_a_writer_then_answers(database: Path) -> None:
    holder = _hold(WRITER, database, 4)
    try:
        done, _ = _audit(database.parent, 60, "sample", "s1")
    finally:
        holder.wait(timeout=60)
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
    holder = _hold(FOREIGN, database, 4)
    try:
        done, _ = _audit(database.parent, 60, "sample", "s1")
    finally:
        holder.wait(timeout=60)
    assert done.returncode == 1, done.stderr  # answered: no such sample in this warehouse
    assert done.stdout.startswith("sample s1: in 0 dataset version(s)")
    assert (
        done.stderr.strip()
        == f"waiting up to 60 s for DuckDB's lock on {database} (another process holds it)"
    )


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
