"""The only code that opens the DuckDB file.

DuckDB lets one process hold a database file at a time (readers included), and a Dagster run's
steps are separate processes. So every open is one short transaction under an exclusive
`fcntl.flock` on a lock file beside the database, and no connection is held across model calls.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import duckdb
import polars as pl

MIGRATIONS = "warehouse.migrations"


class Warehouse:
    """A DuckDB file plus its lock; migrations run on first use in each process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.path.with_suffix(self.path.suffix + ".lock")
        self._migrated = False

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Lock, open, BEGIN; COMMIT on success, ROLLBACK on error; close and unlock always."""
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                con = duckdb.connect(str(self.path))
                try:
                    if not self._migrated:
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

    def query(self, sql: str, params: list | tuple | dict | None = None) -> pl.DataFrame:
        """Run one read query and return all its rows."""
        with self.transaction() as con:
            return con.sql(sql, params=params).pl()

    def rows(self, sql: str, params: list | tuple | dict | None = None) -> list[tuple]:
        with self.transaction() as con:
            return con.execute(sql, params).fetchall()


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
