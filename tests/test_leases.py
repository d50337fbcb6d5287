"""Work leases: the pure rules by hand, then run_cached on a real warehouse with callers racing in
threads, a lapsed claim, a claim of a dead process and a claim whose owner commits meanwhile."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from firm_assets.curation.cache import CacheItem, CallSpec, Outcome, run_cached
from firm_assets.curation.leases import Claim, claim_size, is_live, split_window
from resources.chat import ModelRef
from resources.processes import process_alive
from warehouse.connection import Warehouse

SPEC = CallSpec("captions", ModelRef("tiny/vl", "rev-1"), "caption@1", "text@1", {"temperature": 0})
HOST = socket.gethostname()


def test_is_live_binds_until_expiry_and_only_while_the_process_runs() -> None:
    def alive(pid: int) -> bool:
        return pid == 7

    assert is_live(Claim("a", HOST, 7, expires_at=100.0), now=99.0, host=HOST, alive=alive)
    assert not is_live(Claim("a", HOST, 7, expires_at=100.0), now=100.0, host=HOST, alive=alive)
    assert not is_live(Claim("a", HOST, 8, expires_at=100.0), now=99.0, host=HOST, alive=alive)
    # a process of another host cannot be checked: its claim binds until it expires
    assert is_live(Claim("a", "elsewhere", 8, expires_at=100.0), now=99.0, host=HOST, alive=alive)
    assert not is_live(Claim("a", "elsewhere", 8, expires_at=100.0), now=101.0, host=HOST, alive=alive)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_process_alive_tells_running_from_gone_and_zombie() -> None:
    assert process_alive(os.getpid())
    assert not process_alive(_dead_pid())
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while process_alive(zombie.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not process_alive(zombie.pid)  # exited, not yet reaped
    zombie.wait()


def test_split_window_keeps_order_and_sorts_keys_by_state() -> None:
    claim, defer, done = split_window(["a", "b", "c", "d", "e"], held={"b", "e"}, committed={"c", "e"})
    assert (claim, defer, done) == (["a", "d"], ["b"], ["c", "e"])


@pytest.mark.parametrize(
    ("batch", "done", "seconds", "ahead", "expected"),
    [
        (8, 0, 0.0, 2.0, 8),  # rate unknown: one batch
        (8, 80, 1.0, 2.0, 160),  # 80/s for 2 s
        (8, 10, 1.0, 2.0, 24),  # 20 items rounded up to whole batches
        (4, 1, 10.0, 2.0, 4),  # slow model: never less than a batch
        (8, 80, 1.0, 0.0, 8),  # commits every batch: a batch at a time
    ],
)
def test_claim_size(batch: int, done: int, seconds: float, ahead: float, expected: int) -> None:
    assert claim_size(batch, done, seconds, ahead) == expected


class CountingModel:
    """A stand-in model that answers each sample with its upper-cased name and counts what it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[str]) -> list[Outcome]:
        time.sleep(self.delay_s * len(batch))
        with self.lock:
            self.seen += batch
        return [Outcome(s.upper(), {"answer": s.upper()}) for s in batch]


def _items(n: int) -> list[CacheItem]:
    return [CacheItem(f"s{i}", {"sample": f"s{i}"}, f"s{i}") for i in range(n)]


def _claim(warehouse: Warehouse, key: str, owner: str, host: str, pid: int, expires_at: float) -> None:
    with warehouse.transaction() as con:
        con.execute(
            "INSERT INTO work_claims VALUES (?, ?, ?, 'other-run', ?, ?, ?)",
            [SPEC.stage, key, owner, host, pid, expires_at],
        )


@pytest.mark.parametrize("lookahead", [1, 2])
def test_racing_callers_share_the_work(tmp_path: Path, lookahead: int) -> None:
    """Two callers at once ask each sample once between them, with batches sent one at a time or
    with one more batch in flight (`lookahead`)."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    items = _items(60)
    models = [CountingModel(delay_s=0.01), CountingModel(delay_s=0.01)]
    results: list = [None, None]
    start = threading.Barrier(2)

    def run(index: int) -> None:
        start.wait()
        results[index] = run_cached(
            warehouse,
            SPEC,
            items,
            models[index],
            batch_size=4,
            run_id=f"run{index}",
            commit_every_s=0.05,
            lookahead=lookahead,
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # every sample asked exactly once between the two, and both callers got every answer
    asked = models[0].seen + models[1].seen
    assert sorted(asked) == sorted(item.sample_id for item in items)
    assert all(models[i].seen for i in range(2)), "both callers computed a share"
    (first, first_stats), (second, second_stats) = results
    assert {s: r.outcome.parsed for s, r in first.items()} == {s: r.outcome.parsed for s, r in second.items()}
    assert {r.outcome.output_text for r in first.values()} == {f"S{i}" for i in range(60)}
    assert first_stats.model_calls + second_stats.model_calls == 60
    assert first_stats.cache_hits + first_stats.model_calls == 60
    assert warehouse.rows("SELECT count(*) FROM inference_cache")[0][0] == 60
    assert warehouse.rows("SELECT count(*) FROM work_claims")[0][0] == 0


def test_lapsed_and_orphaned_claims_are_taken_over(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    items = _items(3)
    keys = [SPEC.key(item.inputs) for item in items]
    _claim(warehouse, keys[0], "expired", "elsewhere", 1, expires_at=time.time() - 1)
    _claim(warehouse, keys[1], "killed", HOST, _dead_pid(), expires_at=time.time() + 3600)
    model = CountingModel()
    # one wait for another run's commits would take poll_s (60 s): far above what a loaded machine adds
    started = time.monotonic()
    _, stats = run_cached(warehouse, SPEC, items, model, batch_size=4, run_id="r", poll_s=60)
    assert time.monotonic() - started < 60, "nothing to wait for"
    assert sorted(model.seen) == ["s0", "s1", "s2"] and stats.model_calls == 3
    assert warehouse.rows("SELECT count(*) FROM work_claims")[0][0] == 0


def test_a_live_claim_is_waited_for_then_read_from_the_cache(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    items = _items(4)
    held = SPEC.key(items[2].inputs)
    _claim(warehouse, held, "busy", "elsewhere", 1, expires_at=time.time() + 3600)

    def other_run_commits() -> None:
        time.sleep(0.6)
        with warehouse.transaction() as con:
            con.execute(
                "INSERT INTO inference_cache (cache_key, stage, model_id, model_revision, template_id,"
                " template_version, decoding, sample_id, output_text, parsed, ok, attempts, model_seconds,"
                " dagster_run_id) VALUES (?, ?, 'tiny/vl', 'rev-1', 'caption', '1', '{}', 's2', 'THEIRS',"
                " '{\"answer\": \"THEIRS\"}', true, 1, 0.5, 'other-run')",
                [held, SPEC.stage],
            )
            con.execute("DELETE FROM work_claims WHERE owner = 'busy'")

    other = threading.Thread(target=other_run_commits)
    other.start()
    model = CountingModel()
    results, stats = run_cached(warehouse, SPEC, items, model, batch_size=4, run_id="r", poll_s=0.1)
    other.join()
    assert sorted(model.seen) == ["s0", "s1", "s3"]
    assert results["s2"].outcome.output_text == "THEIRS"
    assert (stats.model_calls, stats.cache_hits) == (3, 1)


def test_a_claim_that_lapses_while_waiting_is_computed_here(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    items = _items(2)
    _claim(warehouse, SPEC.key(items[1].inputs), "stuck", "elsewhere", 1, expires_at=time.time() + 0.8)
    model = CountingModel()
    started = time.monotonic()
    results, stats = run_cached(warehouse, SPEC, items, model, batch_size=4, run_id="r", poll_s=0.1)
    assert time.monotonic() - started >= 0.7, "waited for the claim to lapse"
    assert model.seen == ["s0", "s1"] and stats.model_calls == 2
    assert results["s1"].outcome.output_text == "S1"
    assert warehouse.rows("SELECT count(*) FROM work_claims")[0][0] == 0
