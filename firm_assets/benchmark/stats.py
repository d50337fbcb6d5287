"""How closely a critic's scores follow human scores, as FIRM-Bench reports it.

MAE is the headline metric of the paper; correlations, pairwise ordering agreement and the
parse-failure rate are its companions. A prediction of None (or NaN) is a parse failure: it
counts in the failure rate and is left out of every metric, never scored as 0, which would mix
the parser's failures into the critic's judgement.

The edit "overall" figure is the paper's: the mean of the execution MAE and the consistency MAE
(0.53 and 0.73 give the published 0.62 within rounding), never the MAE of per-item averaged
scores, which lets opposite errors cancel. Its interval resamples items, the same indices for both
dimensions. On the overall row an item counts as scored only when both dimensions parsed, and the
item count, the parse-failure rate and the MAE all count those same items (each dimension's MAE is
taken over the items parsed in every dimension, so no MAE covers items the row calls unscored);
the correlations and pairwise agreement are None: they need one score per item, and the only one
there is would be the averaged score the paper's metric avoids.

Errors are carried as a (dimensions x items) array with NaN for an unparsed answer, so one set of
functions serves one dimension and the overall pair alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def item_errors(predicted: Sequence[float | None], human: Sequence[float]) -> np.ndarray:
    """|predicted - human| per item, NaN where the prediction is a parse failure."""
    if len(predicted) != len(human):
        raise ValueError(f"lengths differ: {len(predicted)} predicted, {len(human)} human")
    truth = np.asarray(human, dtype=float)
    if not np.isfinite(truth).all():
        raise ValueError("human scores must all be finite numbers")
    pred = np.array([np.nan if p is None else p for p in predicted], dtype=float)
    return np.abs(pred - truth)


def scored_in_every_dimension(errors: np.ndarray) -> np.ndarray:
    """The errors (dims x items) with every item that failed in some dimension set to NaN in all."""
    errors = np.atleast_2d(errors)
    return np.where(np.isfinite(errors).all(axis=0), errors, np.nan)


def mae(errors: np.ndarray) -> float | None:
    """Mean over dimensions of each dimension's MAE over the items parsed in every dimension
    (errors: dims x items).

    None when no item parsed in every dimension: a mean over other items, or one that silently
    drops a dimension, would not be the same figure."""
    per_dimension = _masked_means(scored_in_every_dimension(errors)[:, None, :])[:, 0]
    return float(per_dimension.mean()) if np.isfinite(per_dimension).all() else None


def mae_ci(errors: np.ndarray, seed: int = 0, n_boot: int = 1000) -> tuple[float | None, float | None]:
    """95% percentile interval of `mae` over items resampled with replacement (seeded; every
    dimension is resampled at the same item indices). Resamples without a parsed item in some
    dimension are skipped."""
    errors = np.atleast_2d(errors)
    if mae(errors) is None:
        return None, None
    return _percentiles(_resampled_mae(errors, _draws(errors.shape[1], seed, n_boot)))


def mae_margin(
    challenger: np.ndarray, reference: np.ndarray, seed: int = 0, n_boot: int = 1000
) -> dict[str, float | None]:
    """mae(reference) - mae(challenger) (positive: the challenger is closer to people) with a paired
    bootstrap 95% interval: both judges are scored on the same resampled items."""
    challenger, reference = np.atleast_2d(challenger), np.atleast_2d(reference)
    if challenger.shape != reference.shape:
        raise ValueError(f"error arrays differ in shape: {challenger.shape} vs {reference.shape}")
    mine, theirs = mae(challenger), mae(reference)
    if mine is None or theirs is None:
        return {"margin": None, "ci_low": None, "ci_high": None}
    draws = _draws(challenger.shape[1], seed, n_boot)
    low, high = _percentiles(_resampled_mae(reference, draws) - _resampled_mae(challenger, draws))
    return {"margin": theirs - mine, "ci_low": low, "ci_high": high}


def constant_predictor(predicted: Sequence[float | None]) -> bool | None:
    """Whether the parsed predictions have zero variance (None under two parsed predictions)."""
    parsed = [p for p in predicted if p is not None and math.isfinite(p)]
    return None if len(parsed) < 2 else max(parsed) == min(parsed)


def evaluate(
    predicted: Sequence[float | None],
    human: Sequence[float],
    categories: Sequence[str],
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Metrics of one dimension's `predicted` against `human`, item by item, overall and per category."""
    from scipy import stats  # seconds to import; only a bench evaluation needs it

    errors = item_errors(predicted, human)
    result = _summary(errors[None, :], categories, seed, n_boot)
    scored = np.isfinite(errors)
    pred = np.array([p for p, ok in zip(predicted, scored, strict=True) if ok], dtype=float)
    truth = np.asarray(human, dtype=float)[scored]
    return {
        **result,
        "pearson": _correlation(stats.pearsonr, pred, truth),
        "spearman": _correlation(stats.spearmanr, pred, truth),
        "kendall": _correlation(stats.kendalltau, pred, truth),
        "pairwise_agreement": pairwise_agreement(pred, truth),
        "constant_predictions": constant_predictor(predicted),
    }


def evaluate_overall(
    predicted: Sequence[Sequence[float | None]],
    human: Sequence[Sequence[float]],
    categories: Sequence[str],
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """The edit overall row from the per-dimension predictions and labels (execution, consistency):
    MAE = mean of the dimensions' MAEs, paired-bootstrap interval, items scored in every dimension.
    Constant only when every dimension's predictions are."""
    if len(predicted) != len(human) or not predicted:
        raise ValueError("overall needs the same one or more dimensions of predictions and labels")
    errors = np.stack([item_errors(p, h) for p, h in zip(predicted, human, strict=True)])
    flags = [constant_predictor(p) for p in predicted]
    return {
        **_summary(errors, categories, seed, n_boot),
        "pearson": None,
        "spearman": None,
        "kendall": None,
        "pairwise_agreement": None,
        "constant_predictions": None if None in flags else all(flags),
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


def per_category(categories: Sequence[str], errors: np.ndarray) -> dict[str, dict[str, float | int | None]]:
    """`mae` of each category's items; n_scored counts its items parsed in every dimension."""
    errors = np.atleast_2d(errors)
    if len(categories) != errors.shape[1]:
        raise ValueError(f"lengths differ: {errors.shape[1]} items, {len(categories)} categories")
    labels = np.asarray(categories, dtype=object)
    result: dict[str, dict[str, float | int | None]] = {}
    for category in sorted(set(categories)):
        mine = errors[:, labels == category]
        result[category] = {"n_scored": int(np.isfinite(mine).all(axis=0).sum()), "mae": mae(mine)}
    return result


def _summary(errors: np.ndarray, categories: Sequence[str], seed: int, n_boot: int) -> dict[str, Any]:
    """The figures every row has: counts, failure rate, MAE with its interval, per-category MAE."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_items = errors.shape[1]
    if len(categories) != n_items:
        raise ValueError(f"lengths differ: {n_items} items, {len(categories)} categories")
    n_scored = int(np.isfinite(errors).all(axis=0).sum())
    ci_low, ci_high = mae_ci(errors, seed, n_boot)
    return {
        "n_items": n_items,
        "n_scored": n_scored,
        "parse_failure_rate": (n_items - n_scored) / n_items if n_items else None,
        "mae": mae(errors),
        "mae_ci_low": ci_low,
        "mae_ci_high": ci_high,
        "per_category": per_category(categories, errors),
    }


def _draws(n_items: int, seed: int, n_boot: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))


def _masked_means(errors: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where nothing is left (without warnings)."""
    parsed = np.isfinite(errors)
    totals = np.where(parsed, errors, 0.0).sum(axis=-1)
    counts = parsed.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return totals / counts


def _resampled_mae(errors: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """`mae` of each resample (one row of item indices per resample); NaN where undefined."""
    return _masked_means(scored_in_every_dimension(errors)[:, draws]).mean(axis=0)


def _percentiles(values: np.ndarray) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if not len(values):
        return None, None
    low, high = np.percentile(values, [2.5, 97.5])
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
