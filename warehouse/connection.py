"""The only code that opens the DuckDB file.

DuckDB lets one writing process hold a database file at a time (read-only openers may share it
with each other, not with a writer), and a Dagster run's steps are separate processes. So every
open is one short transaction under an `fcntl.flock` on a lock file beside the database:
exclusive for the pipeline, which writes; shared for read-only users (`firm audit`, the run
summary), which open DuckDB with `read_only=True`. No connection is held across model calls.

A writer waits for the project's lock as long as it takes (its work is queued behind the others'
short transactions). A process outside the project (a notebook, the duckdb shell) may hold DuckDB's
own file lock instead, read-only or not, for as long as it likes: everyone waits for that at most
`FIRM_WAREHOUSE_WAIT_S` seconds, saying once on stderr which process holds it (pid and command, from
DuckDB's error text and /proc), then raises `WarehouseBusy` naming it. A reader waits as long for the
project's lock (a writer holds it). A person at a terminal gets an answer, not a hang; a run whose
step meets a notebook waits for it to close instead of failing at once.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import IO, TypeVar

import duckdb
import polars as pl

MIGRATIONS = "warehouse.migrations"
WAIT_ENV = "FIRM_WAREHOUSE_WAIT_S"
DEFAULT_WAIT_S = 120.0
_POLL_S = 0.1
# DuckDB names the holder of its file lock: `Conflicting lock is held in /usr/bin/python3 (PID 123)`.
_HOLDER = re.compile(r"lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")
_COMMAND_CHARS = 160  # a holder's command line is cut to this length in messages
T = TypeVar("T")


class WarehouseBusy(TimeoutError):
    """A user of the warehouse gave up waiting for another process to release it."""


def lock_holder(message: str) -> str:
    """Who holds DuckDB's lock, from its error text: `pid N (command line)`, the command line read
    from /proc where the process is visible, else the program DuckDB names; "another process" when
    the text names none."""
    found = _HOLDER.search(message)
    if found is None:
        return "another process"
    pid = found["pid"]
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        command = ""
    command = " ".join(command.replace("\0", " ").split())  # one line, even for a `python -c` script
    if len(command) > _COMMAND_CHARS:
        command = command[: _COMMAND_CHARS - 3] + "..."
    return f"pid {pid} ({command or found['program']})"


class Warehouse:
    """A DuckDB file plus its lock; a writer migrates it on first use in each process.

    `read_only=True` is for users that only read: a shared lock, a read-only DuckDB connection,
    no migrations, and a bounded wait (`wait_s`, default from FIRM_WAREHOUSE_WAIT_S) for writers.
    """

    def __init__(self, path: Path, read_only: bool = False, wait_s: float | None = None) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.wait_s = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S)) if wait_s is None else wait_s
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.path.with_suffix(self.path.suffix + ".lock")
        self._migrated = False

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Lock, open, BEGIN; COMMIT on success, ROLLBACK on error; close and unlock always."""
        if self.read_only and not self.path.is_file():
            raise FileNotFoundError(f"no warehouse at {self.path} (nothing has been run with this FIRM_HOME)")
        with self.lock_path.open("a") as lock:
            self._lock(lock)
            try:
                con = self._connect()
                try:
                    if not self._migrated and not self.read_only:
                        migrate(con)
                        self._migrated = True
                    con.execute("BEGIN TRANSACTION")
                    try:
                        yield con
                        con.execute("COMMIT")
                    except BaseException:
                        con.execute("ROLLBACK")
                        raise
                finally:
                    con.close()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _lock(self, lock: IO[str]) -> None:
        """Exclusive for writers, shared and bounded for readers (see the module docstring)."""
        if not self.read_only:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return
        self._wait_for(lambda: _try_shared_flock(lock), f"the lock {self.lock_path} (a writer holds it)")

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open DuckDB, retrying while its own file lock is taken: a process that bypasses this
        module (a notebook, the duckdb shell) may hold it, and a writer needs it alone."""
        holder = ["another process"]

        def attempt() -> duckdb.DuckDBPyConnection | None:
            try:
                return duckdb.connect(str(self.path), read_only=self.read_only)
            except duckdb.IOException as error:
                if "lock" in str(error).lower():
                    holder[0] = lock_holder(str(error))
                    return None
                raise

        return self._wait_for(attempt, lambda: f"DuckDB's lock on {self.path} (held by {holder[0]})")

    def _wait_for(self, attempt: Callable[[], T | None], what: str | Callable[[], str]) -> T:
        """Call `attempt` until it returns a value; say once what we wait for; give up after wait_s.
        `what` may be computed after an attempt (it names the process the attempt found)."""
        deadline, told = time.monotonic() + self.wait_s, False
        while (result := attempt()) is None:
            said = what() if callable(what) else what
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"gave up after {self.wait_s:g} s waiting for {said}; try again once it is"
                    f" released (close a notebook's connection), or set {WAIT_ENV} higher"
                )
            if not told:
                print(f"waiting up to {self.wait_s:g} s for {said}", file=sys.stderr, flush=True)
                told = True
            time.sleep(_POLL_S)
        return result

    def query(self, sql: str, params: list | tuple | dict | None = None) -> pl.DataFrame:
        """Run one read query and return all its rows."""
        with self.transaction() as con:
            return con.sql(sql, params=params).pl()

    def rows(self, sql: str, params: list | tuple | dict | None = None) -> list[tuple]:
        """Runs a query and returns plain rows, for callers that need no frame."""
        with self.transaction() as con:
            return con.execute(sql, params).fetchall()


def _try_shared_flock(lock: IO[str]) -> bool | None:
    try:
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    return True


def migration_files() -> list[tuple[int, str, str]]:
    """(number, name, sql) for every numbered migration shipped with the package, in order."""
    found = []
    for entry in resources.files(MIGRATIONS).iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            found.append((number, entry.name, entry.read_text()))
    return sorted(found)


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Apply the migrations this file has not seen yet, each once, recorded in schema_migrations."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (number INTEGER PRIMARY KEY, name VARCHAR,"
        " applied_at TIMESTAMP DEFAULT current_timestamp)"
    )
    applied = {row[0] for row in con.execute("SELECT number FROM schema_migrations").fetchall()}
    for number, name, sql in migration_files():
        if number in applied:
            continue
        con.execute("BEGIN TRANSACTION")
        con.execute(sql)
        con.execute("INSERT INTO schema_migrations (number, name) VALUES (?, ?)", [number, name])
        con.execute("COMMIT")
