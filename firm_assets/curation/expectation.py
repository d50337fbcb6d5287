"""The expectation score: E[digit] under the model's probabilities of the score digits "1".."5".

One function forms it for every reader (curation stages, bench inference, `firm serve`, RL rewards),
so the one bound holds everywhere: sum(d * p_d) / sum(p_d) is mathematically within 1..5, but in
floating point it is not (a top-k backend that lists only "5" gives 5 * p / p, which is
5.000000000000001 for about 3 % of p). The result is clamped to [SCORE_MIN, SCORE_MAX], so no score
outside the scale ever leaves here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from firm_assets.curation.parsers import SCORE_MAX, SCORE_MIN

SCORE_TOKENS = ("1", "2", "3", "4", "5")


def expected_digit(probs: Mapping[str, float]) -> float | None:
    """sum(d * p_d) / sum(p_d) over the digits "1".."5", clamped to the 1-5 scale; None when they
    carry no (finite, positive) probability at all. Other keys and negative or NaN values are ignored."""
    weights = {token: p for token, p in probs.items() if token in SCORE_TOKENS and math.isfinite(p) and p > 0}
    mass = math.fsum(weights.values())
    if not mass > 0 or not math.isfinite(mass):
        return None
    expected = math.fsum(int(token) * p for token, p in weights.items()) / mass
    return min(float(SCORE_MAX), max(float(SCORE_MIN), expected))


def digit_mass(probs: Mapping[str, float]) -> float:
    """The probability the score digits carry together (what `expected_digit` normalises by)."""
    return math.fsum(p for token, p in probs.items() if token in SCORE_TOKENS and math.isfinite(p) and p > 0)
