"""The reward server seen as a critic scorer: the RL trainer's reward function takes either a
`CriticScorer` in its own process or this, which sends each step's rollouts to `firm serve` through
`RewardClient` and hands back the same `EditScores` / `GenScores`. The trainer then applies its own
reward formula to the scores, so a policy's reward is computed one way whichever path scored it."""

from __future__ import annotations

import os
from collections.abc import Sequence

import httpx

from firm_assets.critics.scoring import DimensionScore, EditQuery, EditScores, GenQuery, GenScores, ScoreMode
from firm_assets.serving.client import RewardClient
from firm_assets.serving.wire import Score


def _dimension(score: Score) -> DimensionScore:
    return DimensionScore(score.score, score.failure, score.fallback)


class RemoteScorer:
    """A `firm serve` endpoint with the scorer's interface; `critic_version` is the server's own."""

    def __init__(self, base_url: str, token_env: str = "") -> None:
        token = os.environ.get(token_env) if token_env else None
        if token_env and not token:
            raise ValueError(f"the reward server token variable {token_env} is unset")
        self.client = RewardClient(base_url, token=token)
        try:
            health = self.client.health()
        except httpx.HTTPError as error:
            raise ValueError(f"cannot reach the reward server at {base_url}: {error}") from error
        if health.status != "ok" or not health.critic_version:
            raise ValueError(f"reward server {base_url} is not ready: {health.status} {health.detail or ''}")
        self.critic_version: str = health.critic_version

    def _check_version(self, answered: str) -> None:
        """A server restarted with another critic mid-run would silently change the reward."""
        if answered != self.critic_version:
            raise RuntimeError(
                f"the reward server now scores with {answered}, not {self.critic_version}: "
                "a policy's rewards must come from one critic version"
            )

    def score_edit(self, queries: Sequence[EditQuery], mode: ScoreMode = "expectation") -> list[EditScores]:
        answer = self.client.score_edit(queries, mode)
        self._check_version(answer.critic_version)
        return [EditScores(_dimension(r.execution), _dimension(r.consistency)) for r in answer.results]

    def score_gen(self, queries: Sequence[GenQuery], mode: ScoreMode = "expectation") -> list[GenScores]:
        answer = self.client.score_gen(queries, mode)
        self._check_version(answer.critic_version)
        return [GenScores(_dimension(r.instruction), _dimension(r.quality)) for r in answer.results]
