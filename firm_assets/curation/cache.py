"""The per-sample inference cache: look up by content key, compute misses in batches, commit finished
batches in short transactions as the stage goes (at least once a second).

Every model call in the project goes through `run_cached`, so "unchanged samples are never sent to
a model twice" holds everywhere, and a run killed mid-stage loses nothing it committed. A batch whose
computation raises is split until the failing items stand alone, so one bad item costs only itself.
Misses are claimed with short leases first (`leases.py`), so concurrent runs split a stage's calls
between them instead of both making them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
from dagster import DagsterInvariantViolationError, OpExecutionContext

from firm_assets.curation.leases import LEASE_S, Leases, claim_size, split_window
from firm_assets.run_progress import ProgressReporter
from resources.chat import CallFailure, ModelRef, classify_failure
from warehouse.connection import Warehouse


@dataclass(frozen=True)
class CallSpec:
    """Everything about a call that is not the sample: it is hashed into every key."""

    stage: str
    model: ModelRef
    template_ref: str
    parser_ref: str
    decoding: dict[str, Any]

    def key(self, inputs: dict[str, Any]) -> str:
        """The cache key: everything that can change a model's answer, hashed."""
        material = {
            "model": self.model.model_id,
            "revision": self.model.revision,
            "template": self.template_ref,
            "parser": self.parser_ref,
            "decoding": self.decoding,
            "inputs": inputs,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CacheItem:
    """One sample to process: its id, the content that identifies the call, and what compute needs."""

    sample_id: str
    inputs: dict[str, Any]
    payload: Any


@dataclass
class Outcome:
    """A call's result: parsed fields when ok, else a recorded failure (never a default value).
    A `transient` failure (out of memory, a timeout, a 5xx, a model exception) is reported for this
    run but not cached, so the next run tries again; a permanent one (an answer that did not parse, a
    4xx, an undecodable input image) is cached with its reason."""

    output_text: str | None
    parsed: dict[str, Any] | None
    failure: str | None = None
    attempts: int = 1
    model_seconds: float = 0.0
    transient: bool = False

    @property
    def ok(self) -> bool:
        """Whether the call produced a usable answer."""
        return self.failure is None


def failed_outcome(error: Exception | CallFailure) -> Outcome:
    """An item's exception (or a backend's classified failure of it) as its recorded failure,
    transient or permanent as `classify_failure` says."""
    failure = error if isinstance(error, CallFailure) else classify_failure(error)
    prefix = "transient" if failure.transient else "error"
    return Outcome(None, None, f"{prefix}: {failure.reason}", transient=failure.transient)


@dataclass
class StageStats:
    """What one stage did: the counts an asset reports, and what the calls cost (`costs.py` records
    them per model). Tokens and images count calls made now; a cache hit costs nothing. `wall_seconds`
    is the stage's whole time (lookups, leases, commits and model calls), so `calls_per_s` beside
    `model_seconds` shows whether a slowdown is the model's or the stage's own."""

    rows: int = 0
    cache_hits: int = 0
    model_calls: int = 0
    failures: int = 0
    model_seconds: float = 0.0
    wall_seconds: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)

    transient_failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    images_generated: int = 0
    stage: str = ""
    model: ModelRef | None = None
    on_gpu: bool = False  # the calls ran on a local CUDA device, so their seconds are GPU seconds

    def as_metadata(self) -> dict[str, float | int]:
        """The stage's counts as asset metadata, so the UI shows hits, calls and failures."""
        return {
            "rows": self.rows,
            "cache_hits": self.cache_hits,
            "model_calls": self.model_calls,
            "failures": self.failures,
            "transient_failures": self.transient_failures,
            "model_seconds": round(self.model_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "calls_per_s": calls_per_second(self.model_calls, self.wall_seconds),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "images_generated": self.images_generated,
            **self.extra,
        }


def calls_per_second(calls: int, wall_seconds: float) -> float:
    """A stage's model calls per second of its wall time (0 when it made none)."""
    return round(calls / wall_seconds, 3) if calls and wall_seconds > 0 else 0.0


@dataclass(frozen=True)
class CachedResult:
    """A cache row: the key it was stored under and the outcome it holds."""

    cache_key: str
    outcome: Outcome


ComputeBatch = Callable[[list[Any]], list[Outcome]]
Computing = Future[tuple[list[Outcome], float]]  # a batch's outcomes and its seconds, once computed
COMMIT_EVERY_S = 1.0
POLL_S = 0.5


def _lookup(warehouse: Warehouse, keys: list[str]) -> dict[str, Outcome]:
    if not keys:
        return {}
    with warehouse.transaction() as con:
        return _lookup_in(con, keys)


def _lookup_in(con: duckdb.DuckDBPyConnection, keys: list[str]) -> dict[str, Outcome]:
    if not keys:
        return {}
    rows = con.execute(
        "SELECT cache_key, output_text, parsed, failure, attempts, model_seconds"
        " FROM inference_cache WHERE cache_key IN (SELECT unnest(?))",
        [keys],
    ).fetchall()
    return {
        key: Outcome(text, json.loads(parsed) if parsed else None, failure, attempts, seconds)
        for key, text, parsed, failure, attempts, seconds in rows
    }


CACHE_COLUMNS = {
    "cache_key": pa.string(),
    "stage": pa.string(),
    "model_id": pa.string(),
    "model_revision": pa.string(),
    "template_id": pa.string(),
    "template_version": pa.string(),
    "decoding": pa.string(),
    "sample_id": pa.string(),
    "output_text": pa.string(),
    "parsed": pa.string(),
    "ok": pa.bool_(),
    "failure": pa.string(),
    "attempts": pa.int32(),
    "model_seconds": pa.float64(),
    "dagster_run_id": pa.string(),
}


def _insert(
    con: duckdb.DuckDBPyConnection,
    spec: CallSpec,
    batch: list[tuple[str, CacheItem, Outcome]],
    run_id: str | None,
) -> None:
    """Insert the rows as one Arrow table (DuckDB's executemany is row-at-a-time and slow)."""
    if not batch:
        return
    template_id, _, template_version = spec.template_ref.partition("@")
    columns = {
        "cache_key": [key for key, _, _ in batch],
        "stage": [spec.stage] * len(batch),
        "model_id": [spec.model.model_id] * len(batch),
        "model_revision": [spec.model.revision] * len(batch),
        "template_id": [template_id] * len(batch),
        "template_version": [template_version] * len(batch),
        "decoding": [json.dumps(spec.decoding, sort_keys=True)] * len(batch),
        "sample_id": [item.sample_id for _, item, _ in batch],
        "output_text": [out.output_text for _, _, out in batch],
        "parsed": [json.dumps(out.parsed) if out.parsed is not None else None for _, _, out in batch],
        "ok": [out.ok for _, _, out in batch],
        "failure": [out.failure for _, _, out in batch],
        "attempts": [out.attempts for _, _, out in batch],
        "model_seconds": [out.model_seconds for _, _, out in batch],
        "dagster_run_id": [run_id] * len(batch),
    }
    table = pa.table({name: pa.array(columns[name], type=kind) for name, kind in CACHE_COLUMNS.items()})
    con.register("cache_rows", table)
    names = ", ".join(CACHE_COLUMNS)
    con.execute(f"INSERT INTO inference_cache ({names}) SELECT * FROM cache_rows ON CONFLICT DO NOTHING")
    con.unregister("cache_rows")


def compute_narrowed(compute: ComputeBatch, batch: list[Any]) -> list[Outcome]:
    """compute(batch), or, when it raises, each half on its own, down to single items: a failing item
    becomes its own recorded failure and every other item keeps its answer (one bad item among n
    costs about 2n extra item computations, a batch that works costs nothing extra)."""
    try:
        return compute(batch)
    except Exception as error:
        if len(batch) == 1:
            return [failed_outcome(error)]
    middle = len(batch) // 2
    return compute_narrowed(compute, batch[:middle]) + compute_narrowed(compute, batch[middle:])


@dataclass
class _Work:
    """Where a stage's misses stand: not yet claimed (`todo`), claimed by this call and waiting for
    the model (`mine`), held by another run (`deferred`); answers to commit and claims to release."""

    todo: deque[str]
    mine: deque[str] = field(default_factory=deque)
    deferred: list[str] = field(default_factory=list)
    uncommitted: list[tuple[str, CacheItem, Outcome]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)

    def left(self) -> bool:
        """Whether any key still waits to be computed or claimed."""
        return bool(self.todo or self.mine or self.deferred)

    def drop_all(self) -> list[str]:
        """Give up every key not computed yet (the model is unavailable); returns them."""
        dropped = [*self.mine, *self.todo, *self.deferred]
        self.mine, self.todo, self.deferred = deque(), deque(), []
        return dropped


def _sync(
    warehouse: Warehouse, spec: CallSpec, leases: Leases, work: _Work, want: int, run_id: str | None
) -> dict[str, Outcome]:
    """One transaction: commit finished answers and release their claims, renew the rest, collect
    deferred keys that their owner has committed, and claim keys until `want` are held. Returns the
    answers other runs committed meanwhile."""
    found: dict[str, Outcome] = {}
    with warehouse.transaction() as con:
        _insert(con, spec, work.uncommitted, run_id)
        leases.release(con, work.finished)
        now = time.time()
        leases.renew(con, now)
        held = leases.held_by_others(con, now)
        found.update(_lookup_in(con, work.deferred))
        freed = [key for key in work.deferred if key not in found and key not in held]
        work.deferred = [key for key in work.deferred if key not in found and key in held]
        work.todo.extendleft(reversed(freed))
        claimed: list[str] = []
        while work.todo and len(work.mine) + len(claimed) < want:
            window = [
                work.todo.popleft() for _ in range(min(want - len(work.mine) - len(claimed), len(work.todo)))
            ]
            committed = _lookup_in(con, [key for key in window if key not in held])
            take, defer, done = split_window(window, held, set(committed))
            claimed += take
            work.deferred += defer
            found.update({key: committed[key] for key in done})
        leases.claim(con, claimed, now)
    work.mine.extend(claimed)
    work.uncommitted, work.finished = [], []
    return found


def _timed(compute: ComputeBatch, payloads: list[Any]) -> tuple[list[Outcome], float]:
    """compute_narrowed and how long it took; it may run on a lookahead worker, so no database here."""
    started = time.monotonic()
    outcomes = compute_narrowed(compute, payloads)
    return outcomes, time.monotonic() - started


def _start(pool: ThreadPoolExecutor | None, compute: ComputeBatch, payloads: list[Any]) -> Computing:
    """The batch computing on the pool, or, without one, computed here at once (lookahead 1)."""
    if pool is not None:
        return pool.submit(_timed, compute, payloads)
    future: Computing = Future()
    future.set_result(_timed(compute, payloads))
    return future


def step_log() -> Callable[[str], None]:
    """The running Dagster step's `log.info`, so every stage reports its progress into the run's
    event log (what `firm run` turns into an ETA) without each asset passing it down; outside a step
    (a script, a unit test) a no-op."""
    try:
        return OpExecutionContext.get().log.info
    except DagsterInvariantViolationError:
        return lambda _message: None


def run_cached(
    warehouse: Warehouse,
    spec: CallSpec,
    items: Sequence[CacheItem],
    compute: ComputeBatch,
    batch_size: int,
    run_id: str | None = None,
    commit_every_s: float = COMMIT_EVERY_S,
    lease_s: float = LEASE_S,
    poll_s: float = POLL_S,
    lookahead: int = 1,
) -> tuple[dict[str, CachedResult], StageStats]:
    """Results by sample id. Misses are claimed (leases.py), then computed `batch_size` at a time;
    finished batches are committed together once `commit_every_s` has passed since the last commit
    (and at the end), so a killed run loses at most that much model work and fast models do not
    wait on the database. Each commit also renews this call's claims and claims about two commit
    intervals of work ahead; keys a concurrent run holds are read from the cache once it commits
    them (checked every `poll_s` when nothing else is left), or computed here if its claim lapses.
    When every item of a batch of several fails transiently (the server is down, the GPU is full),
    the remaining misses are not sent: they are transient failures too, left for the next run.

    With `lookahead` n > 1 (for a backend whose calls may overlap), up to n batches compute at once
    in worker threads, so one slow request at a batch's end does not idle a server's other slots; each
    finished batch is handled here as above (this thread alone touches the database). It runs ahead
    only once the model has answered something, so a server that is down is asked one batch, not n;
    after a whole batch fails, nothing more is sent and the batches in flight are collected.

    Progress (misses settled: answered here, found committed by another run, or not sent) is logged
    to the running Dagster step as `progress_message`s (`run_progress.py`)."""
    if lookahead < 1:
        raise ValueError("lookahead must be at least 1")
    started = time.perf_counter()
    keyed = [(spec.key(item.inputs), item) for item in items]
    cached = _lookup(warehouse, sorted({key for key, _ in keyed}))
    stats = StageStats(rows=len(keyed), stage=spec.stage, model=spec.model)
    misses: dict[str, CacheItem] = {}
    for key, item in keyed:
        if key in cached:
            stats.cache_hits += 1
        elif key not in misses:
            misses[key] = item
    work = _Work(deque(misses))
    progress = ProgressReporter(len(misses), "model calls", step_log())
    leases = Leases(spec.stage, run_id, lease_s)
    shared: set[str] = set()  # answers another run computed while this one ran
    last_sync = time.monotonic()
    items_done, compute_s = 0, 0.0
    answered = False  # whether any batch came back with something other than transient failures
    pending: dict[Computing, list[str]] = {}  # batches computing, oldest first
    pool = ThreadPoolExecutor(lookahead, thread_name_prefix=f"{spec.stage}-batch") if lookahead > 1 else None
    try:
        while work.left() or pending:
            timeout = None  # wait for a batch in flight
            if work.left() and len(pending) < (lookahead if answered else 1):
                if not work.mine or time.monotonic() - last_sync >= commit_every_s:
                    want = claim_size(batch_size, items_done, compute_s, 2 * commit_every_s)
                    found = _sync(warehouse, spec, leases, work, want, run_id)
                    cached.update(found)
                    shared.update(found)
                    progress.advance(len(found))
                    last_sync = time.monotonic()
                if work.mine:
                    batch = [work.mine.popleft() for _ in range(min(batch_size, len(work.mine)))]
                    pending[_start(pool, compute, [misses[key].payload for key in batch])] = batch
                    continue
                if not pending:
                    if work.left():
                        time.sleep(poll_s)  # everything left is another run's: wait for its commits
                    continue
                timeout = poll_s  # while batches compute, look again for another run's commits
            done = wait(pending, timeout, FIRST_COMPLETED).done
            if not done:
                continue
            future = next(future for future in pending if future in done)  # the oldest finished
            batch = pending.pop(future)
            outcomes, elapsed = future.result()
            items_done, compute_s = items_done + len(batch), compute_s + elapsed
            # a claim must outlive the slowest batch computed between two renewals
            leases.lease_s = max(leases.lease_s, 3 * elapsed)
            stats.model_calls += len(batch)
            if len(outcomes) != len(batch):
                raise RuntimeError(
                    f"{spec.stage}: compute returned {len(outcomes)} outcomes for {len(batch)}"
                )
            for key, out in zip(batch, outcomes, strict=True):
                cached[key] = out
                work.finished.append(key)
                if not out.transient:
                    work.uncommitted.append((key, misses[key], out))
            progress.advance(len(batch))
            stats.model_seconds += sum(out.model_seconds for out in outcomes)
            answered = answered or not all(out.transient for out in outcomes)
            if len(batch) > 1 and all(out.transient for out in outcomes):
                reason = (outcomes[-1].failure or "").removeprefix("transient: ")
                unavailable = f"transient: not sent, a whole batch before it failed ({reason})"
                dropped = work.drop_all()
                for key in dropped:
                    cached[key] = Outcome(None, None, unavailable, transient=True)
                progress.advance(len(dropped))
    finally:
        if pool is not None:  # batches still computing (an error stopped the loop) end before the claims
            pool.shutdown(wait=True)
        if misses:  # what is still uncommitted (an error stopped the loop) and every claim left
            with warehouse.transaction() as con:
                _insert(con, spec, work.uncommitted, run_id)
                leases.release(con)
    stats.cache_hits += sum(1 for key, _ in keyed if key in shared)
    results = {item.sample_id: CachedResult(key, cached[key]) for key, item in keyed}
    stats.failures = sum(1 for result in results.values() if not result.outcome.ok)
    stats.transient_failures = sum(1 for result in results.values() if result.outcome.transient)
    stats.wall_seconds = time.perf_counter() - started
    return results, stats
