"""RL rewards from critic scores: CME for editing, QMA for generation, and the paper's ablations.

Both FIRM formulas are "base and bonus": the task score (execution, instruction following) is the
base, and the second score (consistency, quality) can only scale it up towards the full reward. A
naive weighted sum instead pays for the second score alone, so an editor that changes nothing earns
its consistency points; it is kept as an ablation, as is execution-only.

A dimension the formula needs whose critic answer failed masks the sample (value None, masked,
with the reason): the trainer drops it from the advantage. It is never scored 0, which would punish
the policy for the critic's failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pydantic

if TYPE_CHECKING:  # types only: the scorer's imports stay out of `firm serve`'s option parsing
    from firm_assets.critics.scoring import DimensionScore, EditScores, GenScores

Normalisation = Literal["minus1_over4", "over5"]
Formula = Literal["cme", "qma", "execution_only", "naive_sum"]

SCORE_MIN, SCORE_MAX = 1.0, 5.0


class RewardConfig(pydantic.BaseModel, frozen=True):
    """Which formula, its weights (w1 on the base, w2 on the bonus) and how 1-5 scores become [0,1].

    `execution_only` uses the base score alone (execution for editing, instruction following for
    generation) and ignores the weights. `naive_sum` is (w1*base + w2*other)/(w1+w2): for editing
    (w1*E + w2*C)/(w1+w2), for generation (w1*IF + w2*Q)/(w1+w2), all normalised."""

    formula: Formula
    w1: float
    w2: float
    normalisation: Normalisation = "minus1_over4"

    @pydantic.model_validator(mode="after")
    def _weights(self) -> RewardConfig:
        if self.w1 < 0 or self.w2 < 0:
            raise ValueError(f"reward weights must not be negative (w1={self.w1}, w2={self.w2})")
        if self.w1 + self.w2 <= 0:
            raise ValueError("reward weights must not both be zero")
        return self

    @classmethod
    def cme(cls, normalisation: Normalisation = "minus1_over4") -> RewardConfig:
        """FIRM's editing reward: w1=0.6 on execution, w2=0.4 on the consistency bonus."""
        return cls(formula="cme", w1=0.6, w2=0.4, normalisation=normalisation)

    @classmethod
    def qma(cls, normalisation: Normalisation = "minus1_over4") -> RewardConfig:
        """FIRM's generation reward (project page): w1=0.4 on alignment, w2=0.6 on the quality bonus."""
        return cls(formula="qma", w1=0.4, w2=0.6, normalisation=normalisation)


@dataclass(frozen=True)
class Reward:
    """One sample's reward in [0,1]; value None (and masked) when a score the formula needs failed."""

    value: float | None
    masked: bool
    reason: str | None


def normalise(score: float, normalisation: Normalisation) -> float:
    """A 1-5 critic score on [0,1]: (s-1)/4 maps 1..5 onto 0..1, s/5 onto 0.2..1. Out-of-range scores
    are an error (a critic score outside 1-5 means a bug upstream, not a reward)."""
    if not SCORE_MIN <= score <= SCORE_MAX:
        raise ValueError(f"critic score {score} outside {SCORE_MIN:g}-{SCORE_MAX:g}")
    return (score - 1.0) / 4.0 if normalisation == "minus1_over4" else score / 5.0


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def _masked(name: str, dimension: DimensionScore) -> Reward:
    return Reward(None, True, f"{name}: {dimension.failure or 'no score'}")


def _combine(
    config: RewardConfig, base: tuple[str, DimensionScore], bonus: tuple[str, DimensionScore]
) -> Reward:
    """The formula on a (base, bonus) pair of named scores; masks when a needed score failed."""
    (base_name, base_score), (bonus_name, bonus_score) = base, bonus
    if base_score.score is None:
        return _masked(base_name, base_score)
    b = normalise(base_score.score, config.normalisation)
    if config.formula == "execution_only":
        return Reward(b, False, None)
    if bonus_score.score is None:
        return _masked(bonus_name, bonus_score)
    m = normalise(bonus_score.score, config.normalisation)
    w1, w2 = config.w1, config.w2
    if config.formula == "naive_sum":
        return Reward(_clip((w1 * b + w2 * m) / (w1 + w2)), False, None)
    if config.formula == "cme":
        return Reward(_clip(b * (w1 + w2 * m) / (w1 + w2)), False, None)
    return Reward(_clip(b * (w1 + w2 * m)), False, None)  # qma


def edit_reward(config: RewardConfig, scores: EditScores) -> Reward:
    """CME: R = E*(w1 + w2*C)/(w1+w2) clipped to [0,1], E execution and C consistency normalised.
    QMA is a generation formula and is refused here."""
    if config.formula == "qma":
        raise ValueError("qma is the generation reward; use cme, execution_only or naive_sum for editing")
    return _combine(config, ("execution", scores.execution), ("consistency", scores.consistency))


def gen_reward(config: RewardConfig, scores: GenScores) -> Reward:
    """QMA: R = IF*(w1 + w2*Q) clipped to [0,1], IF instruction following and Q the quality (the minimum
    of its three sub-scores) normalised. CME is an editing formula and is refused here."""
    if config.formula == "cme":
        raise ValueError("cme is the editing reward; use qma, execution_only or naive_sum for generation")
    return _combine(config, ("instruction", scores.instruction), ("quality", scores.quality))
