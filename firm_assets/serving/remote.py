"""The reward server seen as a critic scorer: the RL trainer's reward function takes either a
`CriticScorer` in its own process or this, which sends each step's rollouts to `firm serve` through
`RewardClient` and hands back the same `EditScores` / `GenScores`. The trainer then applies its own
reward formula to the scores, so a policy's reward is computed one way whichever path scored it.

A step may hold more rollouts than one request may (the gpu profile's steps are 96 and 192): the
step is split into requests within the limits the server advertises in `/healthz` (items, body
bytes, pixels), sent concurrently, and the answers put back in the step's order."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import httpx
from pydantic import BaseModel

from firm_assets.critics.scoring import DimensionScore, EditQuery, EditScores, GenQuery, GenScores, ScoreMode
from firm_assets.serving.client import RewardClient, edit_item, gen_item
from firm_assets.serving.wire import EditItem, EditRequest, GenItem, GenRequest, Limits, Score

Item = TypeVar("Item", EditItem, GenItem)
ENVELOPE_BYTES = 1024  # a request's JSON around its items: mode, reward override, request id
IMAGE_FIELDS = ("source", "edited", "image")


def _dimension(score: Score) -> DimensionScore:
    return DimensionScore(score.score, score.failure, score.fallback)


def _pixels(item: BaseModel) -> int:
    """Pixels of an item's images, read from the PNG headers `encode_image` wrote (the IHDR chunk's
    width and height, bytes 16-24 of the file)."""
    total = 0
    for field in IMAGE_FIELDS:
        data = getattr(item, field, None)
        if data is not None:
            header = base64.b64decode(data[:32])
            total += int.from_bytes(header[16:20]) * int.from_bytes(header[20:24])
    return total


def split_items(items: Sequence[Item], limits: Limits) -> list[list[Item]]:
    """The items in order, cut into consecutive requests each within the server's item, body-size and
    request-pixel limits (an item over a limit alone goes alone, and the server says why)."""
    chunks: list[list[Item]] = []
    size = pixels = 0
    for item in items:
        item_size = len(item.model_dump_json(exclude_none=True).encode()) + 1  # and its comma
        item_pixels = _pixels(item)
        fits = (
            chunks
            and len(chunks[-1]) < limits.max_items
            and size + item_size + ENVELOPE_BYTES <= limits.max_body_bytes
            and pixels + item_pixels <= limits.max_request_pixels
        )
        if not fits:
            chunks.append([])
            size = pixels = 0
        chunks[-1].append(item)
        size += item_size
        pixels += item_pixels
    return chunks


class RemoteScorer:
    """A `firm serve` endpoint with the scorer's interface; `critic_version` is the server's own."""

    def __init__(
        self, base_url: str, token_env: str = "", concurrency: int = 8, **client_options: float
    ) -> None:
        token = os.environ.get(token_env) if token_env else None
        if token_env and not token:
            raise ValueError(f"the reward server token variable {token_env} is unset")
        self.client = RewardClient(base_url, token=token, connections=concurrency, **client_options)
        self.concurrency = concurrency
        try:
            health = self.client.health()
        except httpx.HTTPError as error:
            raise ValueError(f"cannot reach the reward server at {base_url}: {error}") from error
        if health.status != "ok" or not health.critic_version or health.limits is None:
            raise ValueError(f"reward server {base_url} is not ready: {health.status} {health.detail or ''}")
        self.critic_version: str = health.critic_version
        self.limits: Limits = health.limits
        self.requests = 0  # requests sent, for logs and tests

    def _check_version(self, answered: str) -> None:
        """A server restarted with another critic mid-run would silently change the reward."""
        if answered != self.critic_version:
            raise RuntimeError(
                f"the reward server now scores with {answered}, not {self.critic_version}: "
                "a policy's rewards must come from one critic version"
            )

    def _scatter(self, items: Sequence[Item], post: Callable[[list[Item]], BaseModel]) -> list:
        """Every item's result in order, from concurrent requests within the server's limits."""
        chunks = split_items(items, self.limits)
        self.requests += len(chunks)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(chunks) or 1)) as pool:
            answers = list(pool.map(post, chunks))
        results = []
        for answer in answers:
            self._check_version(answer.critic_version)
            results += answer.results
        return results

    def score_edit(self, queries: Sequence[EditQuery], mode: ScoreMode = "expectation") -> list[EditScores]:
        """Scores edits on the reward server, as an in-process critic would."""
        results = self._scatter(
            [edit_item(q) for q in queries], lambda c: self.client.edit(EditRequest(items=c, mode=mode))
        )
        return [EditScores(_dimension(r.execution), _dimension(r.consistency)) for r in results]

    def score_gen(self, queries: Sequence[GenQuery], mode: ScoreMode = "expectation") -> list[GenScores]:
        """Scores generations on the reward server, as an in-process critic would."""
        results = self._scatter(
            [gen_item(q) for q in queries], lambda c: self.client.gen(GenRequest(items=c, mode=mode))
        )
        return [GenScores(_dimension(r.instruction), _dimension(r.quality)) for r in results]
