"""Work leases: concurrent runs share model calls instead of each making them.

Before computing cache misses, a run claims them in `work_claims` (stage, cache key, owner, expiry).
Keys that another live owner holds are deferred: the run computes what it could claim, then reads
the deferred keys from the cache once their owner has committed them. A claim that expired, or
whose process is gone (same host, pid not running), is taken over, so a killed run strands no work.
A lease only decides who computes: the cache keeps each answer once whatever happens, so a lease
that runs out early can cost a repeated call, never a lost or doubled row.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import duckdb

from resources.processes import process_alive

LEASE_S = 30.0


@dataclass(frozen=True)
class Claim:
    """Someone else's claim on a key: who, where, and until when (epoch seconds)."""

    owner: str
    host: str
    pid: int
    expires_at: float


def is_live(claim: Claim, now: float, host: str, alive: Callable[[int], bool] = process_alive) -> bool:
    """A claim binds until it expires, and, on this host, only while its process runs."""
    if claim.expires_at <= now:
        return False
    return claim.host != host or alive(claim.pid)


def split_window(
    window: Sequence[str], held: set[str], committed: set[str]
) -> tuple[list[str], list[str], list[str]]:
    """(claim, defer, done) for candidate keys in order: committed ones are answers already, ones
    another live owner holds wait for it, the rest are this run's to compute."""
    claim, defer, done = [], [], []
    for key in window:
        if key in committed:
            done.append(key)
        elif key in held:
            defer.append(key)
        else:
            claim.append(key)
    return claim, defer, done


def claim_size(batch_size: int, items_done: int, compute_s: float, ahead_s: float) -> int:
    """How many keys to hold ahead: `ahead_s` of work at the rate measured so far, in whole batches,
    at least one batch (one batch while the rate is unknown). Holding little keeps the rest free
    for a concurrent run; holding a few seconds' worth keeps claim transactions rare."""
    if items_done == 0 or compute_s <= 0:
        return batch_size
    wanted = items_done / compute_s * ahead_s
    return max(1, math.ceil(wanted / batch_size)) * batch_size


@dataclass
class Leases:
    """One run_cached call's claims on one stage's keys; every method runs inside the caller's
    warehouse transaction, so claiming, committing and releasing are atomic together."""

    stage: str
    run_id: str | None
    lease_s: float = LEASE_S
    owner: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def __post_init__(self) -> None:
        self.owner = f"{self.run_id or 'no-run'}:{self.owner}"

    def held_by_others(self, con: duckdb.DuckDBPyConnection, now: float) -> set[str]:
        """Keys of this stage that another owner holds with a live claim; drops expired claims."""
        con.execute("DELETE FROM work_claims WHERE stage = ? AND expires_at <= ?", [self.stage, now])
        rows = con.execute(
            "SELECT cache_key, owner, host, pid, expires_at FROM work_claims WHERE stage = ? AND owner <> ?",
            [self.stage, self.owner],
        ).fetchall()
        alive: dict[int, bool] = {}

        def cached_alive(pid: int) -> bool:
            if pid not in alive:
                alive[pid] = process_alive(pid)
            return alive[pid]

        return {
            key
            for key, owner, host, pid, expires in rows
            if is_live(Claim(owner, host, pid, expires), now, self.host, cached_alive)
        }

    def claim(self, con: duckdb.DuckDBPyConnection, keys: list[str], now: float) -> None:
        """Take `keys` (free, expired or orphaned: the caller checked) until now + lease_s."""
        if not keys:
            return
        con.execute(
            "DELETE FROM work_claims WHERE stage = ? AND cache_key IN (SELECT unnest(?::VARCHAR[]))",
            [self.stage, keys],
        )
        con.execute(
            "INSERT INTO work_claims SELECT ?, unnest(?::VARCHAR[]), ?, ?, ?, ?, ?",
            [self.stage, keys, self.owner, self.run_id, self.host, self.pid, now + self.lease_s],
        )

    def renew(self, con: duckdb.DuckDBPyConnection, now: float) -> None:
        """Extends our claims so other workers do not take keys we are still computing."""
        con.execute("UPDATE work_claims SET expires_at = ? WHERE owner = ?", [now + self.lease_s, self.owner])

    def release(self, con: duckdb.DuckDBPyConnection, keys: list[str] | None = None) -> None:
        """Drop these claims (their answers are committed or were transient), or all of ours."""
        if keys is None:
            con.execute("DELETE FROM work_claims WHERE owner = ?", [self.owner])
        elif keys:
            con.execute(
                "DELETE FROM work_claims WHERE owner = ? AND cache_key IN (SELECT unnest(?::VARCHAR[]))",
                [self.owner, keys],
            )
