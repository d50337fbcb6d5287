"""RL rewards: every formula and normalisation on hand-computed values, weights validation, masking."""

from __future__ import annotations

import pydantic
import pytest

from firm_assets.critics.rewards import Reward, RewardConfig, edit_reward, gen_reward, normalise
from firm_assets.critics.scoring import DimensionScore, EditScores, GenScores


def ok(score: float) -> DimensionScore:
    return DimensionScore(score, None)


FAILED = DimensionScore(None, "parse: no score in the answer")


def edit(execution: DimensionScore, consistency: DimensionScore) -> EditScores:
    return EditScores(execution=execution, consistency=consistency)


def gen(instruction: DimensionScore, quality: DimensionScore) -> GenScores:
    return GenScores(instruction=instruction, quality=quality)


@pytest.mark.parametrize(
    ("score", "normalisation", "expected"),
    [
        (1, "minus1_over4", 0.0),
        (3, "minus1_over4", 0.5),
        (5, "minus1_over4", 1.0),
        (4.2, "minus1_over4", 0.8),
        (1, "over5", 0.2),
        (4, "over5", 0.8),
        (5, "over5", 1.0),
    ],
)
def test_normalisation(score: float, normalisation: str, expected: float) -> None:
    assert normalise(score, normalisation) == pytest.approx(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("score", [0.0, 0.99, 5.01, 7.0])
def test_out_of_range_scores_are_an_error(score: float) -> None:
    with pytest.raises(ValueError, match="outside 1-5"):
        normalise(score, "minus1_over4")


def test_firm_defaults() -> None:
    assert (RewardConfig.cme().formula, RewardConfig.cme().w1, RewardConfig.cme().w2) == ("cme", 0.6, 0.4)
    assert (RewardConfig.qma().formula, RewardConfig.qma().w1, RewardConfig.qma().w2) == ("qma", 0.4, 0.6)
    assert RewardConfig.cme().normalisation == "minus1_over4"
    assert RewardConfig.qma("over5").normalisation == "over5"


def firm_reward(config: RewardConfig, base: float, bonus: float) -> Reward:
    """The FIRM reward of the config's task: CME on an edit's (execution, consistency), QMA on a
    generated image's (instruction following, quality)."""
    if config.formula == "cme":
        return edit_reward(config, edit(ok(base), ok(bonus)))
    return gen_reward(config, gen(ok(base), ok(bonus)))


@pytest.mark.parametrize(
    ("config", "base", "bonus", "expected"),
    [
        # CME, w1=0.6 on execution E, w2=0.4 on consistency C
        # E=(4-1)/4=0.75, C=(5-1)/4=1: 0.75*(0.6+0.4*1)/1.0 = 0.75
        (RewardConfig.cme(), 4, 5, 0.75),
        # E=0.75, C=(3-1)/4=0.5: 0.75*(0.6+0.2) = 0.6
        (RewardConfig.cme(), 4, 3, 0.6),
        # no execution, no reward, however consistent: E=0 -> 0
        (RewardConfig.cme(), 1, 5, 0.0),
        # E=1, C=0: 1*(0.6+0) = 0.6
        (RewardConfig.cme(), 5, 1, 0.6),
        # s/5: E=0.8, C=0.6: 0.8*(0.6+0.24) = 0.672
        (RewardConfig.cme("over5"), 4, 3, 0.672),
        # QMA, w1=0.4 on instruction following IF, w2=0.6 on quality Q
        # IF=(5-1)/4=1, Q=(3-1)/4=0.5: 1*(0.4+0.6*0.5) = 0.7
        (RewardConfig.qma(), 5, 3, 0.7),
        # IF=0.75, Q=1: 0.75*(0.4+0.6) = 0.75
        (RewardConfig.qma(), 4, 5, 0.75),
        # IF=0: 0
        (RewardConfig.qma(), 1, 5, 0.0),
        # s/5: IF=0.6, Q=0.4: 0.6*(0.4+0.24) = 0.384
        (RewardConfig.qma("over5"), 3, 2, 0.384),
    ],
)
def test_cme_and_qma(config: RewardConfig, base: float, bonus: float, expected: float) -> None:
    assert firm_reward(config, base, bonus) == Reward(pytest.approx(expected), False, None)


def test_cme_divides_by_the_weight_sum() -> None:
    # w1=3, w2=1: E=0.75, C=0.5 -> 0.75*(3+0.5)/4 = 0.65625
    config = RewardConfig(formula="cme", w1=3, w2=1)
    assert edit_reward(config, edit(ok(4), ok(3))).value == pytest.approx(0.65625)


def test_qma_is_clipped_to_one() -> None:
    # weights summing past 1 are not divided out in QMA: IF=1, Q=1: 1*(1+1) = 2 -> clipped to 1
    config = RewardConfig(formula="qma", w1=1, w2=1)
    assert gen_reward(config, gen(ok(5), ok(5))).value == 1.0
    # IF=0.5, Q=0.5: 0.5*(1+0.5) = 0.75, not clipped
    assert gen_reward(config, gen(ok(3), ok(3))).value == pytest.approx(0.75)


def test_execution_only_ignores_the_second_score() -> None:
    config = RewardConfig(formula="execution_only", w1=0.6, w2=0.4)
    assert edit_reward(config, edit(ok(4), ok(1))).value == pytest.approx(0.75)
    assert gen_reward(config, gen(ok(2), ok(5))).value == pytest.approx(0.25)
    over5 = RewardConfig(formula="execution_only", w1=1, w2=0, normalisation="over5")
    assert edit_reward(over5, edit(ok(4), ok(5))).value == pytest.approx(0.8)


def test_naive_sum_pays_for_consistency_alone() -> None:
    config = RewardConfig(formula="naive_sum", w1=0.6, w2=0.4)
    # (0.6*0.75 + 0.4*0.5)/1.0 = 0.65
    assert edit_reward(config, edit(ok(4), ok(3))).value == pytest.approx(0.65)
    # the hack CME closes: nothing executed, perfectly consistent -> 0.4 (CME gives 0)
    assert edit_reward(config, edit(ok(1), ok(5))).value == pytest.approx(0.4)
    assert edit_reward(RewardConfig.cme(), edit(ok(1), ok(5))).value == 0.0
    # generation, weights not summing to 1: (1*0.5 + 3*1)/4 = 0.875
    assert gen_reward(RewardConfig(formula="naive_sum", w1=1, w2=3), gen(ok(3), ok(5))).value == 0.875


def test_a_failed_base_score_masks_the_sample() -> None:
    for config, reward in [
        (RewardConfig.cme(), lambda c: edit_reward(c, edit(FAILED, ok(5)))),
        (RewardConfig.qma(), lambda c: gen_reward(c, gen(FAILED, ok(5)))),
        (RewardConfig(formula="execution_only", w1=1, w2=0), lambda c: edit_reward(c, edit(FAILED, ok(5)))),
    ]:
        result = reward(config)
        assert result.value is None and result.masked
        assert result.reason is not None and "parse: no score in the answer" in result.reason


def test_a_failed_bonus_score_masks_unless_the_formula_ignores_it() -> None:
    masked = edit_reward(RewardConfig.cme(), edit(ok(5), FAILED))
    assert masked == Reward(None, True, "consistency: parse: no score in the answer")
    assert gen_reward(RewardConfig.qma(), gen(ok(5), FAILED)) == Reward(
        None, True, "quality: parse: no score in the answer"
    )
    assert edit_reward(RewardConfig(formula="naive_sum", w1=1, w2=1), edit(ok(5), FAILED)).masked
    # execution-only never needed consistency
    assert edit_reward(RewardConfig(formula="execution_only", w1=1, w2=0), edit(ok(5), FAILED)) == Reward(
        1.0, False, None
    )


@pytest.mark.parametrize(("w1", "w2"), [(-0.1, 1.0), (1.0, -1.0), (0.0, 0.0)])
def test_bad_weights_are_refused(w1: float, w2: float) -> None:
    with pytest.raises(pydantic.ValidationError, match="weights"):
        RewardConfig(formula="cme", w1=w1, w2=w2)


def test_unknown_formula_and_normalisation_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        RewardConfig(formula="sum", w1=1, w2=1)  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        RewardConfig(formula="cme", w1=1, w2=1, normalisation="over4")  # type: ignore[arg-type]


def test_formulas_belong_to_their_task() -> None:
    with pytest.raises(ValueError, match="qma is the generation reward"):
        edit_reward(RewardConfig.qma(), edit(ok(5), ok(5)))
    with pytest.raises(ValueError, match="cme is the editing reward"):
        gen_reward(RewardConfig.cme(), gen(ok(5), ok(5)))
