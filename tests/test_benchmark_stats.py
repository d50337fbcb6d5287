"""Benchmark metrics against hand-computed values and scipy, and the PNG plots."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from firm_assets.benchmark.plots import confusion_png, scatter_png
from firm_assets.benchmark.stats import evaluate


def test_mae_pairwise_and_categories_by_hand() -> None:
    # errors 1, 0, 2, 0; of the five pairs people rank differently only (5, 4) is reversed
    result = evaluate([1, 2, 3, 4], [2, 2, 5, 4], ["a", "a", "b", "b"])
    assert (result["n_items"], result["n_scored"], result["parse_failure_rate"]) == (4, 4, 0.0)
    assert result["mae"] == pytest.approx(0.75)
    assert result["pairwise_agreement"] == pytest.approx(4 / 5)
    assert result["per_category"] == {"a": {"n_scored": 2, "mae": 0.5}, "b": {"n_scored": 2, "mae": 1.0}}


def test_failures_are_excluded_from_every_metric_and_counted() -> None:
    result = evaluate([None, 2, 3, None, 5, float("nan")], [1, 2, 4, 5, 5, 3], ["a", "a", "b", "b", "b", "c"])
    assert (result["n_items"], result["n_scored"]) == (6, 3)
    assert result["parse_failure_rate"] == pytest.approx(0.5)
    assert result["mae"] == pytest.approx(1 / 3)  # scoring failures as 0 would give 10/6
    assert result["pearson"] == pytest.approx(stats.pearsonr([2, 3, 5], [2, 4, 5]).statistic)
    assert result["per_category"] == {
        "a": {"n_scored": 1, "mae": 0.0},
        "b": {"n_scored": 2, "mae": 0.5},
        "c": {"n_scored": 0, "mae": None},
    }


def test_correlations_equal_scipy_with_ties() -> None:
    rng = random.Random(5)
    human = [float(rng.randint(1, 5)) for _ in range(60)]
    predicted = [min(5.0, max(1.0, h + rng.choice([-1, 0, 0, 1]) + rng.random() / 2)) for h in human]
    result = evaluate(predicted, human, ["all"] * 60)
    assert result["pearson"] == pytest.approx(stats.pearsonr(predicted, human).statistic)
    assert result["spearman"] == pytest.approx(stats.spearmanr(predicted, human).statistic)
    assert result["kendall"] == pytest.approx(stats.kendalltau(predicted, human).statistic)
    assert result["mae"] == pytest.approx(np.mean(np.abs(np.array(predicted) - np.array(human))))


def test_bootstrap_interval_contains_the_mae_and_is_seeded() -> None:
    rng = random.Random(1)
    human = [float(rng.randint(1, 5)) for _ in range(40)]
    predicted = [float(rng.randint(1, 5)) for _ in range(40)]
    result = evaluate(predicted, human, ["all"] * 40, seed=3)
    assert result["mae_ci_low"] < result["mae"] < result["mae_ci_high"]
    again = evaluate(predicted, human, ["all"] * 40, seed=3)
    other = evaluate(predicted, human, ["all"] * 40, seed=4)
    assert (again["mae_ci_low"], again["mae_ci_high"]) == (result["mae_ci_low"], result["mae_ci_high"])
    assert (other["mae_ci_low"], other["mae_ci_high"]) != (result["mae_ci_low"], result["mae_ci_high"])
    constant = evaluate([2, 3, 4], [3, 4, 5], ["all"] * 3)
    assert constant["mae_ci_low"] == constant["mae"] == constant["mae_ci_high"] == pytest.approx(1.0)


def test_perfect_reversed_and_tied_predictions() -> None:
    human = [1, 2, 3, 4, 5, 5]
    perfect = evaluate(human, human, ["all"] * 6)
    assert perfect["pairwise_agreement"] == 1.0
    assert perfect["mae"] == 0.0
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["kendall"] == pytest.approx(1.0)
    reversed_ = evaluate([6 - h for h in human], human, ["all"] * 6)
    assert reversed_["pairwise_agreement"] == 0.0
    assert reversed_["spearman"] == pytest.approx(-1.0)
    assert evaluate([3, 3, 3], [1, 2, 3], ["all"] * 3)["pairwise_agreement"] == 0.5


def test_undefined_metrics_are_none_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constant = evaluate([3, 3, 3, 3], [1, 2, 4, 5], ["all"] * 4)
        two = evaluate([1, 2], [1, 2], ["all"] * 2)
        flat_human = evaluate([1, 2, 3], [4, 4, 4], ["all"] * 3)
        nothing = evaluate([None, None], [1, 2], ["all"] * 2)
        empty = evaluate([], [], [])
    for result in (constant, two, flat_human):
        assert (result["pearson"], result["spearman"], result["kendall"]) == (None, None, None)
    assert constant["mae"] == pytest.approx(1.5) and two["pairwise_agreement"] == 1.0
    assert flat_human["pairwise_agreement"] is None
    assert nothing["parse_failure_rate"] == 1.0
    assert all(nothing[key] is None for key in ("mae", "mae_ci_low", "mae_ci_high", "pairwise_agreement"))
    assert empty["n_items"] == 0 and empty["parse_failure_rate"] is None and empty["per_category"] == {}


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        evaluate([1, 2], [1], ["a", "b"])
    with pytest.raises(ValueError, match="finite"):
        evaluate([1], [float("nan")], ["a"])
    with pytest.raises(ValueError, match="n_boot"):
        evaluate([1], [1], ["a"], n_boot=0)


@pytest.mark.parametrize("plot", [scatter_png, confusion_png])
def test_plots_are_small_deterministic_pngs(tmp_path: Path, plot: Callable[..., Path]) -> None:
    predicted = [1, 2.5, None, 4, 5, 3, 3, float("nan"), 0.4, 4.5]
    human = [1, 2, 3, 5, 4, 3, 3, 2, 1, 3.5]
    first = plot(predicted, human, "execution", tmp_path / "out" / "a.png")
    second = plot(predicted, human, "execution", tmp_path / "b.png")
    assert first == tmp_path / "out" / "a.png"
    assert first.read_bytes() == second.read_bytes()
    assert 0 < first.stat().st_size <= 100_000
    with Image.open(first) as image:
        image.verify()
        assert image.format == "PNG"
    for name, values in (("none.png", [None, None]), ("empty.png", [])):
        path = plot(values, [3] * len(values), "nothing parsed", tmp_path / name)
        with Image.open(path) as image:
            assert image.format == "PNG"
