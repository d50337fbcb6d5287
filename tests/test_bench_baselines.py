"""The constant baseline's answers, the MLflow figure names, and the trained-beats-base gate on
hand-made bench predictions (a real DuckDB warehouse and Parquet file, no Dagster run needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from firm_assets.benchmark.baselines import BaselineUnavailable, median_labels
from firm_assets.benchmark.checks import compare, headline_errors, trained_critic_beats_base
from firm_assets.benchmark.results import mlflow_metrics
from warehouse.connection import Warehouse

HUMAN = {"execution": [1.0, 2.0, 4.0, 5.0, 3.0, 4.0], "consistency": [5.0, 4.0, 4.0, 5.0, 2.0, 3.0]}


def _register(warehouse: Warehouse, dataset: str, version: str, frame: pl.DataFrame, folder: Path) -> None:
    path = folder / f"{version}.parquet"
    frame.write_parquet(path)
    with warehouse.transaction() as con:
        con.execute(
            "INSERT INTO dataset_versions (dataset, version, n_samples, params, parquet_path)"
            " VALUES (?, ?, ?, '{}', ?)",
            [dataset, version, frame.height, str(path)],
        )


def test_median_labels_are_the_median_rounded_training_label(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    # labels as the SFT targets round them: 4.4 -> 4, 2.6 -> 3, 5 -> 5 (execution median 4);
    # 1.2 -> 1, 2 -> 2, None is not a label (consistency: median_low of 1, 2 is 1)
    edit = pl.DataFrame({"execution_score": [4.4, 2.6, 5.0], "consistency_score": [1.2, 2.0, None]})
    _register(warehouse, "firm_edit", "v1", edit, tmp_path)
    assert median_labels(warehouse, "firm_edit", "v1") == {"execution": 4.0, "consistency": 1.0}
    # mean 3.4, median 4: the median is what minimises the mean absolute error
    skewed = pl.DataFrame({"if_score": [1.0, 1.0, 4.0, 4.0, 4.0, 5.0, 5.0, 4.0, 2.0, 4.0]})
    _register(warehouse, "firm_gen", "g1", skewed, tmp_path)
    assert median_labels(warehouse, "firm_gen", "g1") == {"instruction": 4.0}
    with pytest.raises(BaselineUnavailable, match="not in the warehouse"):
        median_labels(warehouse, "firm_edit", "missing")
    _register(
        warehouse,
        "firm_gen",
        "empty",
        pl.DataFrame({"if_score": [None]}, schema={"if_score": pl.Float64}),
        tmp_path,
    )
    with pytest.raises(BaselineUnavailable, match="no if_score labels"):
        median_labels(warehouse, "firm_gen", "empty")
    with pytest.raises(BaselineUnavailable, match="no label columns"):
        median_labels(warehouse, "other", "v1")


def test_mlflow_metric_names_are_stable_and_leave_the_judge_out() -> None:
    row = {
        "bench": "edit",
        "judge": "firm_edit_critic@abcd",
        "dimension": "overall",
        "n_items": 4,
        "n_scored": 3,
        "parse_failure_rate": 0.25,
        "mae": 1.125,
        "mae_ci_low": 0.9,
        "mae_ci_high": 1.3,
        "mae_expectation": 1.0,
        "pearson": None,
        "spearman": None,
        "kendall": None,
        "pairwise_agreement": None,
        "constant_predictions": True,
    }
    assert mlflow_metrics([row]) == {
        "edit.overall.n_items": 4.0,
        "edit.overall.n_scored": 3.0,
        "edit.overall.parse_failure_rate": 0.25,
        "edit.overall.mae": 1.125,
        "edit.overall.mae_ci_low": 0.9,
        "edit.overall.mae_ci_high": 1.3,
        "edit.overall.mae_expectation": 1.0,
        "edit.overall.constant_predictions": 1.0,
    }


def _edit_predictions(judge: str, kind: str, scores: dict[str, list[float | None]]) -> pl.DataFrame:
    return pl.concat(
        pl.DataFrame(
            {
                "item_id": [f"i{n}" for n in range(len(HUMAN[d]))],
                "dimension": d,
                "text_score": scores[d],
                "human": HUMAN[d],
                "bench": "edit",
                "judge": judge,
                "judge_kind": kind,
            },
            schema_overrides={"text_score": pl.Float64},
        )
        for d in ("execution", "consistency")
    )


def _gen_predictions(judge: str, kind: str, scores: list[float]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [f"g{n}" for n in range(6)],
            "dimension": "instruction",
            "text_score": scores,
            "human": [1.0, 3.0, 5.0, 2.0, 4.0, 5.0],
            "bench": "gen",
            "judge": judge,
            "judge_kind": kind,
        }
    )


def test_headline_errors_follow_item_order_and_mask_failures() -> None:
    frame = _edit_predictions("j", "trained", {"execution": [1, None, 4, 5, 3, 2], "consistency": [5] * 6})
    errors = headline_errors(frame.reverse(), "edit", "j")
    assert errors.shape == (2, 6)
    assert np.isnan(errors[0, 1]) and errors[0, 5] == 2.0 and list(errors[1]) == [0, 1, 1, 0, 3, 2]


def test_compare_fails_a_critic_worse_than_constant_and_passes_a_clear_winner() -> None:
    reference = np.array([[1.0, 1.0, 2.0, 1.0, 1.0, 2.0]])
    worse = compare(reference + 1, reference, n_boot=200)
    assert worse["beats"] is False and worse["margin"] == pytest.approx(-1.0)
    clear = compare(reference * 0, reference, n_boot=200)
    assert clear["beats"] is True and clear["ci_low"] > 0
    tie = compare(reference, reference, n_boot=200)
    assert tie["beats"] is False and tie["why"] == "margin CI reaches 0"
    selective = np.array([[0.0, np.nan, np.nan, 0.0, 0.0, 0.0]])  # exact where it answers at all
    assert compare(selective, reference, n_boot=200)["why"] == "more parse failures (33% vs 0%)"
    constant = compare(reference * 0, reference, constant=True, n_boot=200)
    assert constant["beats"] is False and constant["margin"] == pytest.approx(4 / 3)
    unparsed = np.full_like(reference, np.nan)
    assert compare(unparsed, reference)["beats"] is False
    assert compare(reference, unparsed) == {
        "margin": None,
        "ci_low": None,
        "ci_high": None,
        "beats": True,
        "why": "the reference parsed no answer: parse failures only",
    }


def test_gate_warns_when_a_critic_is_worse_than_constant() -> None:
    exact = {d: list(HUMAN[d]) for d in HUMAN}
    frame = pl.concat(
        [
            _edit_predictions("critic", "trained", {d: [5.0] * 6 for d in HUMAN}),  # MAE 2 and 1
            _edit_predictions("base", "base", {d: [1.0] * 6 for d in HUMAN}),
            _edit_predictions("constant", "constant", {d: [3.5] * 6 for d in HUMAN}),
            _gen_predictions("gen-critic", "trained", [1.0, 3.0, 5.0, 2.0, 4.0, 5.0]),
            _gen_predictions("gen-base", "base", [5.0, 1.0, 1.0, 5.0, 1.0, 1.0]),
            _gen_predictions("gen-constant", "constant", [3.0] * 6),
        ]
    )
    result = trained_critic_beats_base(bench_results=frame)
    assert result.passed is False and result.severity.value == "WARN"
    verdicts = {k: v.value for k, v in result.metadata.items() if " vs " in k}
    assert verdicts["edit/critic vs constant"].startswith("does not beat: MAE margin -")
    assert verdicts["gen/gen-critic vs gen-base"].startswith("beats: MAE margin +")
    assert verdicts["edit/critic vs base"].endswith("(the trained critic's predictions are constant)")
    assert result.metadata["nothing_to_compare"].value == "-"

    good = frame.filter(pl.col("judge") != "critic").vstack(_edit_predictions("critic", "trained", exact))
    assert trained_critic_beats_base(bench_results=good).passed is True


def test_gate_warns_when_there_is_nothing_to_compare() -> None:
    frame = pl.concat(
        [
            _edit_predictions("base", "base", {d: [1.0] * 6 for d in HUMAN}),
            _gen_predictions("g", "trained", [1.0, 2.0, 3.0, 4.0, 5.0, 1.0]),
        ]
    )
    result = trained_critic_beats_base(bench_results=frame)
    assert result.passed is False and result.severity.value == "WARN"
    missing = result.metadata["nothing_to_compare"].value
    assert "edit: no trained judge" in missing and "edit: no constant judge" in missing
    assert "gen: no base judge" in missing


def test_gate_warns_for_a_near_constant_critic_against_the_median_constant(tmp_path: Path) -> None:
    """A critic that answers 4 on every item but one (exact there) on the demo bench's labels: against
    the constant answering the median training label (4) its margin is that one item, and the gate
    warns; against the mean label (3.0) the same critic would pass."""
    execution = [1.0, 2.0, 5.0, 5.0, 5.0, 5.0, 4.0, 2.0]
    consistency = [5.0, 5.0, 5.0, 3.0, 3.0, 4.0, 4.0, 2.0]
    human = {"execution": execution * 4, "consistency": consistency * 4}  # 32 items
    training = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 5.0, 1.0, 1.0]  # median 4, mean 3.0
    warehouse = Warehouse(tmp_path / "w.duckdb")
    labels = pl.DataFrame({"execution_score": training, "consistency_score": training})
    _register(warehouse, "firm_edit", "v1", labels, tmp_path)
    constant = median_labels(warehouse, "firm_edit", "v1")
    assert constant == {"execution": 4.0, "consistency": 4.0}

    def predictions(judge: str, kind: str, scores: dict[str, list[float]]) -> pl.DataFrame:
        return pl.concat(
            pl.DataFrame(
                {
                    "item_id": [f"i{n:02d}" for n in range(32)],
                    "dimension": d,
                    "text_score": scores[d],
                    "human": human[d],
                    "bench": "edit",
                    "judge": judge,
                    "judge_kind": kind,
                }
            )
            for d in human
        )

    near_constant = {d: [human[d][0]] + [4.0] * 31 for d in human}
    frame = pl.concat(
        [
            predictions("critic", "trained", near_constant),
            predictions("base", "base", {d: [1.0] * 32 for d in human}),
            predictions("constant", "constant", {d: [constant[d]] * 32 for d in human}),
        ]
    )
    result = trained_critic_beats_base(bench_results=frame)
    verdict = result.metadata["edit/critic vs constant"].value
    assert result.passed is False and result.severity.value == "WARN"
    assert verdict.startswith("does not beat: MAE margin +0.062") and verdict.endswith(
        "(margin CI reaches 0)"
    )
    mean = frame.filter(pl.col("judge") != "constant").vstack(
        predictions("constant", "constant", {d: [3.0] * 32 for d in human})
    )
    assert (
        trained_critic_beats_base(bench_results=mean)
        .metadata["edit/critic vs constant"]
        .value.startswith("beats")
    )
