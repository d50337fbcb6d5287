"""Cost accounting: token counting, per-model cost lines, the warehouse rows and their summaries (hand
computed), and `firm cost`."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from firm_assets.cli import main
from firm_assets.curation.cache import StageStats
from firm_assets.curation.costs import CostMeter, children_cpu_seconds, merge, model_cost, training_figures
from resources.chat import ModelRef, TokenUsage
from resources.transformers_backend import answer_lengths
from warehouse.connection import Warehouse
from warehouse.costs import MaterializationCost, ModelCost, asset_summary, model_summary, record_cost


def test_answer_lengths_stop_at_the_first_end_token() -> None:
    new_tokens = torch.tensor([[5, 7, 2, 2], [5, 6, 8, 9], [3, 0, 0, 0]])
    assert answer_lengths(new_tokens, [2]) == [3, 4, 4]
    assert answer_lengths(new_tokens, [2, 3]) == [3, 4, 1]


def test_token_usage_sums_calls_from_many_threads() -> None:
    usage = TokenUsage()
    threads = [threading.Thread(target=lambda: [usage.add(3, 1) for _ in range(100)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert usage.snapshot() == (1200, 400)


def _line(stage: str, model: str, **figures) -> ModelCost:
    values = dict.fromkeys(
        ("model_calls", "cache_hits", "tokens_in", "tokens_out", "images_generated"), 0
    ) | {"model_seconds": 0.0, "gpu_seconds": 0.0}
    return ModelCost(stage, model, "rev", "transformers", **(values | figures))


def test_model_cost_counts_gpu_seconds_only_on_a_cuda_device() -> None:
    stats = StageStats(model_calls=3, cache_hits=2, model_seconds=1.5, tokens_in=40, tokens_out=9)
    stats.stage, stats.model = "captions", ModelRef("m", "r1", backend="vllm")
    line = model_cost(stats)
    assert (line.model_calls, line.cache_hits, line.tokens_in, line.tokens_out) == (3, 2, 40, 9)
    assert (line.backend, line.model_seconds, line.gpu_seconds) == ("vllm", 1.5, 0.0)
    stats.on_gpu = True
    assert model_cost(stats).gpu_seconds == 1.5
    with pytest.raises(ValueError, match="no model"):
        model_cost(StageStats(stage="loose"))


def test_merge_sums_lines_of_one_stage_and_model() -> None:
    merged = merge(
        [
            _line("s", "a", model_calls=2, tokens_in=10, model_seconds=0.5),
            _line("s", "b", model_calls=1),
            _line("s", "a", model_calls=3, tokens_in=5, model_seconds=0.25, cache_hits=4),
        ]
    )
    assert merged == [
        _line("s", "a", model_calls=5, tokens_in=15, model_seconds=0.75, cache_hits=4),
        _line("s", "b", model_calls=1),
    ]


def test_meter_totals_and_cost() -> None:
    meter = CostMeter()
    for calls, hits, tokens in ((2, 1, 30), (0, 5, 0)):
        stats = StageStats(
            model_calls=calls, cache_hits=hits, model_seconds=0.5, tokens_in=tokens, tokens_out=2
        )
        stats.stage, stats.model = f"stage{calls}", ModelRef("m", "r")
        meter.add(stats)
    assert meter.totals() == {
        "model_calls": 2,
        "cache_hits": 6,
        "model_seconds": 1.0,
        "tokens_in": 30,
        "tokens_out": 4,
    }
    sum(i * i for i in range(200_000))  # some CPU time
    cost = meter.cost("run", "asset", "v1")
    assert cost.cpu_seconds > 0 and cost.wall_seconds > 0 and cost.gpu_seconds == 0.0
    assert len(cost.models) == 2


def test_training_figures_count_gpu_seconds_on_every_cuda_rank() -> None:
    assert training_figures(10.0, False, 4, tokens_in=7) == {
        "model_seconds": 10.0,
        "gpu_seconds": 0.0,
        "tokens_in": 7,
    }
    assert training_figures(2.5, True, 8, images_generated=12)["gpu_seconds"] == 20.0
    with pytest.raises(ValueError, match="not cost figures"):
        training_figures(1.0, False, 1, steps=3)


def test_a_training_line_names_the_model_and_zeroes_what_was_not_reported() -> None:
    meter = CostMeter()
    figures = training_figures(3.0, True, 2, model_calls=4, images_generated=4)
    meter.add_training("nft", ModelRef("pipe", "r9", backend="diffusers"), figures)
    assert meter.lines == [
        ModelCost("nft", "pipe", "r9", "diffusers", 4, 0, 3.0, 6.0, 0, 0, 4),
    ]
    assert meter.cost("run", "policy", "v").gpu_seconds == 6.0


def test_the_meter_counts_the_cpu_time_of_a_child_it_waited_for() -> None:
    burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
    meter = CostMeter()
    own_before, children_before = time.process_time(), children_cpu_seconds()
    subprocess.run([sys.executable, "-c", burn], check=True)
    child = children_cpu_seconds() - children_before
    own = time.process_time() - own_before
    assert child >= 0.4  # the child's startup and its 0.4 s loop
    cost = meter.cost("run", "asset", None)
    assert cost.cpu_seconds >= child > own  # the parent only waited


def _costs(wh: Warehouse) -> None:
    """Three materializations: run r1 and r2 of edit_scores at data version v1, r2 of captions at w."""
    record_cost(
        wh,
        MaterializationCost(
            "r1",
            "edit_scores",
            "v1",
            10.0,
            8.0,
            (
                _line(
                    "execution",
                    "judge",
                    model_calls=4,
                    cache_hits=1,
                    model_seconds=2.0,
                    tokens_in=100,
                    tokens_out=10,
                ),
                _line(
                    "consistency",
                    "judge",
                    model_calls=4,
                    cache_hits=1,
                    model_seconds=1.0,
                    gpu_seconds=1.0,
                    tokens_in=80,
                    tokens_out=8,
                ),
            ),
        ),
    )
    record_cost(
        wh,
        MaterializationCost(
            "r2", "edit_scores", "v1", 1.0, 0.5, (_line("execution", "judge", cache_hits=5),)
        ),
    )
    record_cost(
        wh,
        MaterializationCost(
            "r2",
            "edit_candidates",
            "w",
            6.0,
            5.0,
            (_line("edit_candidates", "editor", model_calls=3, model_seconds=4.5, images_generated=3),),
        ),
    )


def test_summaries_per_asset_data_version_and_model(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    _costs(wh)
    assets = {row["asset_key"]: row for row in asset_summary(wh).iter_rows(named=True)}
    assert assets["edit_scores"] == {
        "asset_key": "edit_scores",
        "data_version": "v1",
        "materializations": 2,
        "wall_seconds": 11.0,
        "cpu_seconds": 8.5,
        "gpu_seconds": 1.0,
        "model_calls": 8,
        "cache_hits": 7,
        "model_seconds": 3.0,
        "tokens_in": 180,
        "tokens_out": 18,
        "images_generated": 0,
    }
    assert (assets["edit_candidates"]["images_generated"], assets["edit_candidates"]["materializations"]) == (
        3,
        1,
    )
    only_r2 = asset_summary(wh, run="r2")
    assert sorted(only_r2["asset_key"]) == ["edit_candidates", "edit_scores"]
    assert only_r2.filter(only_r2["asset_key"] == "edit_scores")["cache_hits"].to_list() == [5]
    models = model_summary(wh, asset="edit_scores")
    assert models.select("model_id", "model_calls", "cache_hits", "tokens_in").rows() == [
        ("judge", 8, 7, 180)
    ]


def test_a_retried_step_replaces_its_cost(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    _costs(wh)
    record_cost(
        wh,
        MaterializationCost(
            "r2", "edit_scores", "v1", 2.0, 1.0, (_line("execution", "judge", cache_hits=9),)
        ),
    )
    assert asset_summary(wh, asset="edit_scores")["cache_hits"].to_list() == [11]
    assert wh.rows("SELECT count(*) FROM model_costs WHERE dagster_run_id = 'r2'") == [(2,)]


def test_firm_cost_prints_the_summaries(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FIRM_HOME", str(tmp_path))
    assert main(["cost"]) == 2  # no warehouse yet
    assert "no warehouse" in capsys.readouterr().err
    from resources.home import warehouse_path

    _costs(Warehouse(Path(warehouse_path())))
    assert main(["cost", "--asset", "edit_scores"]) == 0
    out = capsys.readouterr().out
    assert "cost per asset and data version" in out and "per model" in out
    row = next(line for line in out.splitlines() if line.startswith("edit_scores"))
    assert row.split() == ["edit_scores", "v1", "2", "8", "7", "3.00", "8.50", "1.00", "180", "18", "0"]
    assert "edit_candidates" not in out
    assert main(["cost", "--run", "nope"]) == 1


def test_the_transformers_backend_counts_prompt_and_answer_tokens(tiny_models: dict[str, Path]) -> None:
    from resources.chat import ChatRequest, Decoding
    from resources.tiny_models import TEXT_NAME
    from resources.transformers_backend import TransformersBackend

    backend = TransformersBackend(str(tiny_models[TEXT_NAME]))
    requests = [ChatRequest(("a red car",)), ChatRequest(("two blue birds on a wire, at dusk",))]
    prompts = [len(backend.tokenizer.encode(backend._render(r), add_special_tokens=False)) for r in requests]
    backend.generate(requests, Decoding(max_new_tokens=4))
    tokens_in, tokens_out = backend.usage.snapshot()
    assert tokens_in == sum(prompts)  # padding is not counted
    assert 2 <= tokens_out <= 8  # each answer is 1 to 4 tokens (an end token counts)
    backend.next_token_probs(requests[:1], ["Score: "], ["1"])
    assert backend.usage.snapshot()[1] == tokens_out  # a forward pass generates nothing
    assert backend.usage.snapshot()[0] > tokens_in


def test_a_real_gen_run_records_its_costs_and_runs_the_canary(curated_gen, gen_home: Path, capsys) -> None:
    from graph_runs import metadata

    result = curated_gen.result  # the session's curated gen chain, read in this test's copy of its home
    assert result.success
    wh = Warehouse(gen_home / "warehouse.duckdb")
    rows = model_summary(wh, run=result.run_id)
    by_asset = {row["asset_key"]: row for row in rows.iter_rows(named=True)}
    assert set(by_asset) == {"gen_checklists", "generated_images", "gen_scores"}
    for asset in ("gen_checklists", "gen_scores"):
        row = by_asset[asset]
        assert row["model_calls"] > 0 and row["model_seconds"] > 0
        assert row["tokens_in"] > row["tokens_out"] > 0
    assert metadata(result, "gen_checklists")["tokens_in"] == by_asset["gen_checklists"]["tokens_in"]
    meta = metadata(result, "gen_scores")
    canary_tokens = meta["gen_canary_tokens_in"]  # the canary's own stages, asked once per judge
    assert (
        meta["if_tokens_in"] + meta["quality_tokens_in"] + canary_tokens
        == by_asset["gen_scores"]["tokens_in"]
    )
    found = int(
        next(c for c in result.get_asset_check_evaluations() if c.check_name == "gen_scores_judge_drift")
        .metadata["canary_found"]
        .value.split()[0]
    )
    assert canary_tokens > 0 and meta["gen_canary_model_calls"] == 2 * found  # each item, 2 stages
    images = by_asset["generated_images"]
    assert images["images_generated"] == images["model_calls"] == 20 and images["tokens_in"] == 0
    assert asset_summary(wh, run=result.run_id).filter(asset_key="gen_scores")["cpu_seconds"][0] > 0
    drift = next(c for c in result.get_asset_check_evaluations() if c.check_name == "gen_scores_judge_drift")
    assert drift.passed and drift.metadata["previous_judge"].value == "-"
    assert drift.metadata["canary_found"].value.endswith("of 6")
    assert main(["cost", "--run", result.run_id[:8]]) == 0
    assert "gen_scores" in capsys.readouterr().out
