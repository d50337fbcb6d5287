"""Lookahead: a stage on a backend whose calls may overlap keeps the next batch computing while a
batch's slowest request finishes, and still commits every answer once and stops sending once a whole
batch fails (that it shares work through leases is `test_leases.py`'s racing test, run with lookahead
too). The server stage runs over real HTTP."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from loopback import LoopbackServer, SlowOne
from test_leases import SPEC, CountingModel, _items

from firm_assets.curation.cache import Outcome, run_cached
from firm_assets.curation.parsers import CAPTION_TEXT
from firm_assets.curation.prompts import load_template
from firm_assets.curation.stage import ChatStage, StageInput, run_chat_stage
from firm_assets.gen.checklists import PLAN_LIMITS
from resources.chat import Decoding
from resources.openai_backend import OpenAIBackend
from resources.transformers_backend import TransformersBackend
from resources.vllm_backend import VllmBackend
from warehouse.connection import Warehouse

# A text stage: the planner's template, read back as free text, so the server's echo parses.
PLANS = ChatStage("plans", load_template("checklist_plan"), CAPTION_TEXT, Decoding(max_new_tokens=16))
SLOW_S = 3.0


def _inputs() -> list[StageInput]:
    """Three batches of four: the first all fast, the second holding the one slow request."""
    prompts = [f"item-{index:02d}" + (" SLOW-ITEM" if index == 5 else "") for index in range(12)]
    return [StageInput(f"s{index:02d}", {"prompt": p, **PLAN_LIMITS}, {}) for index, p in enumerate(prompts)]


def _text(handler: SlowOne, index: int) -> str:
    """The request text the server saw for sample `index` (it names the sample)."""
    (text,) = [text for text in handler.finished if f"item-{index:02d}" in text]
    return text


def test_only_the_server_backend_declares_overlapping_calls() -> None:
    assert OpenAIBackend.concurrent_calls is True
    assert TransformersBackend.concurrent_calls is False and VllmBackend.concurrent_calls is False


@pytest.mark.parametrize("concurrent_calls", [True, False])
def test_a_server_stage_sends_the_next_batch_while_a_slow_request_runs(
    concurrent_calls: bool, tmp_path: Path
) -> None:
    """With lookahead the third batch is answered while the second batch's slow request runs; without
    it (a backend that says its calls must not overlap) the third batch waits for the slow one."""
    handler = SlowOne(SLOW_S, marker="SLOW-ITEM")
    server = LoopbackServer(handler)
    warehouse = Warehouse(tmp_path / "w.duckdb")
    try:
        with OpenAIBackend(server.base_url, "judge", revision="r1", concurrency=4) as backend:
            backend.concurrent_calls = concurrent_calls
            started = time.monotonic()
            results, stats = run_chat_stage(PLANS, backend, _inputs(), warehouse, batch_size=4, run_id="a")
            took = time.monotonic() - started
            again, rerun = run_chat_stage(PLANS, backend, _inputs(), warehouse, batch_size=4, run_id="b")
    finally:
        server.close()
    slow_done = handler.finished[_text(handler, 5)]
    third = [_text(handler, index) for index in range(8, 12)]
    if concurrent_calls:
        # the second and third batches race into the backend's pool, so the third batch's requests
        # start before or while the slow one runs: either way none of them waits for its answer
        assert max(handler.finished[text] for text in third) < slow_done
    else:
        assert min(handler.started[text] for text in third) >= slow_done
    assert took >= SLOW_S
    assert (stats.model_calls, stats.cache_hits, stats.failures) == (12, 0, 0)
    assert server.calls == 12 and server.max_in_flight <= 4
    for index in range(12):
        text = results[f"s{index:02d}"].outcome.output_text
        assert f"item-{index:02d}" in text and again[f"s{index:02d}"].outcome.output_text == text
    assert warehouse.rows("SELECT count(*), count(DISTINCT sample_id) FROM inference_cache") == [(12, 12)]
    assert warehouse.rows("SELECT count(*) FROM work_claims") == [(0,)]
    assert (rerun.model_calls, rerun.cache_hits) == (0, 12)


class GoneAfterFirstBatch:
    """Answers [s0, s1] after 0.2 s (a stage running ahead would send [s2, s3] meanwhile); every batch
    with s2 or s3 raises as if the server went away; the batch with s4 answers after 0.3 s, so it is
    still in flight when the failure is seen."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[str]) -> list[Outcome]:
        with self.lock:
            self.seen.append(batch)
        if {"s2", "s3"} & set(batch):
            raise ConnectionError("server went away")
        if "s0" in batch:
            time.sleep(0.2)
        if "s4" in batch:
            time.sleep(0.3)
        return [Outcome(s.upper(), {"answer": s.upper()}) for s in batch]


@pytest.mark.parametrize(("lookahead", "answered"), [(1, ["s0", "s1"]), (2, ["s0", "s1", "s4", "s5"])])
def test_a_whole_failed_batch_stops_sending_and_the_one_in_flight_is_kept(
    lookahead: int, answered: list[str], tmp_path: Path
) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    model = GoneAfterFirstBatch()
    results, stats = run_cached(warehouse, SPEC, _items(10), model, batch_size=2, lookahead=lookahead)
    # the first batch goes alone (no running ahead before an answer); then [s2, s3] fails, is
    # narrowed to single items, and nothing after the batches in flight is sent
    in_flight = [["s4", "s5"]] if lookahead > 1 else []
    assert sorted(model.seen) == sorted([["s0", "s1"], ["s2", "s3"], ["s2"], ["s3"], *in_flight])
    assert model.seen[0] == ["s0", "s1"]
    assert stats.model_calls == 2 + 2 + 2 * len(in_flight)
    assert sorted(s for s, r in results.items() if r.outcome.ok) == answered
    for sample in ("s2", "s3"):
        assert results[sample].outcome.failure == "transient: ConnectionError: server went away"
    not_sent = [s for s, r in results.items() if s not in answered and s not in ("s2", "s3")]
    assert len(not_sent) == 10 - len(answered) - 2
    for sample in not_sent:
        assert results[sample].outcome.failure == (
            "transient: not sent, a whole batch before it failed (ConnectionError: server went away)"
        )
    assert stats.transient_failures == 10 - len(answered)
    assert [row[0] for row in warehouse.rows("SELECT sample_id FROM inference_cache ORDER BY 1")] == answered
    assert warehouse.rows("SELECT count(*) FROM work_claims") == [(0,)]


def test_lookahead_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lookahead must be at least 1"):
        run_cached(Warehouse(tmp_path / "w.duckdb"), SPEC, _items(1), CountingModel(), 1, lookahead=0)
