"""The trainer's reward function from a critic scorer: score every rollout of a step in one batch,
turn the scores into rewards (masked, never 0, when an answer failed), and compute the
reward-hacking monitors that go with the step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from firm_assets.critics import scoring
from firm_assets.critics.rewards import Reward, RewardConfig, edit_reward, gen_reward
from firm_assets.rl.settings import Task

if TYPE_CHECKING:  # the trainer pulls in torch and diffusers; the RL checks only need DIVERGENCE
    from firm_assets.rl.nft.records import RewardBatch, RewardFn, Rollout

SCALE = 4.0  # the 1-5 critic scale's width: divergence is reported on [0, 1]
DIMENSIONS = {"edit": ("execution", "consistency"), "gen": ("instruction", "quality")}
DIVERGENCE = "critic_divergence"

Scores = scoring.EditScores | scoring.GenScores


def score_rollouts(
    task: Task,
    scorer: scoring.Scorer,
    rollouts: Sequence[Rollout],
    requirements: Mapping[str, str | None],
    mode: scoring.ScoreMode,
) -> list[Scores]:
    """One scorer call for all rollouts; an editing rollout is judged against its group's source and
    the request's requirement."""
    if task == "edit":
        queries = [
            scoring.EditQuery(r.source, r.image, r.text, requirements.get(r.prompt_id)) for r in rollouts
        ]
        return list(scorer.score_edit(queries, mode))
    return list(scorer.score_gen([scoring.GenQuery(r.image, r.text) for r in rollouts], mode))


def to_reward(task: Task, config: RewardConfig, scores: Scores) -> Reward:
    """Applies the task's reward formula to a critic's scores."""
    return edit_reward(config, scores) if task == "edit" else gen_reward(config, scores)


def _pairs(
    task: Task, scores: Sequence[Scores]
) -> list[tuple[scoring.DimensionScore, scoring.DimensionScore]]:
    first, second = DIMENSIONS[task]
    return [(getattr(s, first), getattr(s, second)) for s in scores]


def dimension_means(task: Task, scores: Sequence[Scores]) -> dict[str, float]:
    """Mean score of each dimension over the items where it was answered (absent when none was)."""
    means = {}
    for index, name in enumerate(DIMENSIONS[task]):
        values = [pair[index].score for pair in _pairs(task, scores) if pair[index].score is not None]
        if values:
            means[f"score_{name}"] = sum(values) / len(values)
    return means


def dimension_divergence(task: Task, scores: Sequence[Scores]) -> float | None:
    """Mean |first - second| dimension score on [0, 1] over items with both answered: without a
    held-out critic, the other dimension is the independent judge (a policy that hacks execution
    while consistency collapses, or instruction following while quality collapses, shows as a
    growing gap). None when no item has both."""
    gaps = [abs(a.score - b.score) / SCALE for a, b in _pairs(task, scores) if None not in (a.score, b.score)]
    return sum(gaps) / len(gaps) if gaps else None


def reward_divergence(trained: Sequence[Reward], held_out: Sequence[Reward]) -> float | None:
    """Mean |training critic reward - held-out critic reward| over items both rewarded."""
    gaps = [
        abs(a.value - b.value)
        for a, b in zip(trained, held_out, strict=True)
        if a.value is not None and b.value is not None
    ]
    return sum(gaps) / len(gaps) if gaps else None


def critic_reward_fn(
    task: Task,
    scorer: scoring.Scorer,
    config: RewardConfig,
    mode: scoring.ScoreMode,
    requirements: Mapping[str, str | None],
    held_out: scoring.Scorer | None = None,
) -> RewardFn:
    """The RewardFn the trainer calls once per step with all of the step's rollouts."""
    from firm_assets.rl.nft.records import RewardBatch

    def reward(rollouts: list[Rollout]) -> RewardBatch:
        scores = score_rollouts(task, scorer, rollouts, requirements, mode)
        rewards = [to_reward(task, config, s) for s in scores]
        monitors = dimension_means(task, scores)
        if held_out is None:
            divergence = dimension_divergence(task, scores)
        else:
            judged = score_rollouts(task, held_out, rollouts, requirements, mode)
            divergence = reward_divergence(rewards, [to_reward(task, config, s) for s in judged])
        if divergence is not None:
            monitors[DIVERGENCE] = divergence
        values = [None if r.masked else r.value for r in rewards]
        return RewardBatch(rewards=values, monitors=monitors)

    return reward
