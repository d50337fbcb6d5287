"""How closely a critic's scores follow human scores, as FIRM-Bench reports it.

MAE is the headline metric of the paper; correlations, pairwise ordering agreement and the
parse-failure rate are its companions. A prediction of None (or NaN) is a parse failure: it
counts in the failure rate and is left out of every metric, never scored as 0, which would mix
the parser's failures into the critic's judgement.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats


def evaluate(
    predicted: Sequence[float | None],
    human: Sequence[float],
    categories: Sequence[str],
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Metrics of `predicted` against `human`, item by item, overall and per category."""
    if not len(predicted) == len(human) == len(categories):
        raise ValueError(
            f"lengths differ: {len(predicted)} predicted, {len(human)} human, {len(categories)} categories"
        )
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    truth_all = np.asarray(human, dtype=float)
    if not np.isfinite(truth_all).all():
        raise ValueError("human scores must all be finite numbers")
    scored = np.array([p is not None and math.isfinite(p) for p in predicted], dtype=bool)
    pred = np.array([p for p, ok in zip(predicted, scored, strict=True) if ok], dtype=float)
    truth = truth_all[scored]
    errors = np.abs(pred - truth)
    n_items, n_scored = len(predicted), int(scored.sum())
    ci_low, ci_high = _bootstrap_ci(errors, seed, n_boot)
    return {
        "n_items": n_items,
        "n_scored": n_scored,
        "parse_failure_rate": (n_items - n_scored) / n_items if n_items else None,
        "mae": float(errors.mean()) if n_scored else None,
        "mae_ci_low": ci_low,
        "mae_ci_high": ci_high,
        "pearson": _correlation(stats.pearsonr, pred, truth),
        "spearman": _correlation(stats.spearmanr, pred, truth),
        "kendall": _correlation(stats.kendalltau, pred, truth),
        "pairwise_agreement": pairwise_agreement(pred, truth),
        "per_category": _per_category(categories, scored, errors),
    }


def pairwise_agreement(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Share of item pairs people rank differently that the critic orders the same way (ties: half).

    None when people scored every item alike, since there is then no order to agree with.
    """
    first, second = np.triu_indices(len(truth), k=1)
    human_diff = truth[first] - truth[second]
    ranked = human_diff != 0
    if not ranked.any():
        return None
    pred_diff = (pred[first] - pred[second])[ranked]
    same_order = np.sign(pred_diff) == np.sign(human_diff[ranked])
    return float(np.where(pred_diff == 0, 0.5, same_order).mean())


def _bootstrap_ci(errors: np.ndarray, seed: int, n_boot: int) -> tuple[float | None, float | None]:
    """95% percentile interval of the MAE over items resampled with replacement (seeded)."""
    if not len(errors):
        return None, None
    draws = np.random.default_rng(seed).integers(0, len(errors), size=(n_boot, len(errors)))
    low, high = np.percentile(errors[draws].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def _correlation(
    measure: Callable[[np.ndarray, np.ndarray], Any], pred: np.ndarray, truth: np.ndarray
) -> float | None:
    """None where a correlation is undefined (under 3 items or a constant side), without warnings."""
    if len(pred) < 3 or np.ptp(pred) == 0 or np.ptp(truth) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(measure(pred, truth).statistic)
    return value if math.isfinite(value) else None


def _per_category(
    categories: Sequence[str], scored: np.ndarray, errors: np.ndarray
) -> dict[str, dict[str, float | int | None]]:
    scored_categories = np.array([c for c, ok in zip(categories, scored, strict=True) if ok], dtype=object)
    result: dict[str, dict[str, float | int | None]] = {}
    for category in sorted(set(categories)):
        mine = errors[scored_categories == category]
        result[category] = {"n_scored": len(mine), "mae": float(mine.mean()) if len(mine) else None}
    return result
