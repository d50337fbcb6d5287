"""The RL trainer's reward function through a real `firm serve` app on loopback: the remote scorer
gives the same scores as the critic in-process, splits a step larger than the server's limits into
concurrent requests and puts the answers back in order, carries the server's critic version, and
refuses a server that changed critics mid-run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from loopback import AppServer, wait_ready
from PIL import Image

from firm_assets.critics.rewards import RewardConfig, edit_reward
from firm_assets.critics.scoring import (
    CriticScorer,
    DimensionScore,
    EditQuery,
    EditScores,
    GenQuery,
    GenScores,
    ScoreMode,
)
from firm_assets.rl.critic_reward import critic_reward_fn
from firm_assets.rl.nft.records import Rollout
from firm_assets.serving.app import create_app
from firm_assets.serving.remote import RemoteScorer, split_items
from firm_assets.serving.settings import ServerSettings
from firm_assets.serving.wire import GenItem, Limits, encode_image
from resources.tiny_models import VL_NAME


@pytest.fixture(scope="module")
def critic(tiny_models: dict[str, Path]) -> CriticScorer:
    return CriticScorer.load(str(tiny_models[VL_NAME]), max_new_tokens=32)


@pytest.fixture(scope="module")
def server(critic: CriticScorer):
    app_server = AppServer(create_app(ServerSettings(), lambda: critic))
    wait_ready(app_server.base_url)
    yield app_server
    app_server.close()


def test_remote_scores_equal_in_process_scores(server: AppServer, critic: CriticScorer) -> None:
    remote = RemoteScorer(server.base_url)
    assert remote.critic_version == critic.critic_version
    source, edited = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    queries = [
        EditQuery(source, edited, "make it blue"),
        EditQuery(source, source, "add a hat", "keep it red"),
    ]
    here, there = critic.score_edit(queries), remote.score_edit(queries)
    assert len(there) == 2
    for local, answered in zip(here, there, strict=True):
        assert answered.execution.score == pytest.approx(local.execution.score)
        assert answered.consistency.score == pytest.approx(local.consistency.score)
    gen = remote.score_gen([GenQuery(edited, "a blue square")])
    assert gen[0].instruction.score is not None and 1 <= gen[0].instruction.score <= 5


def test_reward_fn_through_the_server(server: AppServer, critic: CriticScorer) -> None:
    """The trainer's reward function fed by the server: CME of the returned scores, one per rollout."""
    remote = RemoteScorer(server.base_url)
    source = Image.new("RGB", (32, 32), "red")
    rollouts = [
        Rollout("p1", "make it blue", source, Image.new("RGB", (32, 32), colour), seed)
        for seed, colour in enumerate(["blue", "green"])
    ]
    config = RewardConfig.cme()
    batch = critic_reward_fn("edit", remote, config, "expectation", {"p1": None})(rollouts)
    scores = critic.score_edit([EditQuery(source, r.image, r.text) for r in rollouts])
    assert batch.rewards == [pytest.approx(edit_reward(config, s).value) for s in scores]
    assert "critic_divergence" in batch.monitors


def test_a_server_that_changed_critics_is_refused(server: AppServer) -> None:
    remote = RemoteScorer(server.base_url)
    remote.critic_version = "models:/firm_edit_critic/1"  # what the run started with
    with pytest.raises(RuntimeError, match="one critic version"):
        remote.score_gen([GenQuery(Image.new("RGB", (32, 32), "blue"), "a blue square")])


def test_an_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"cannot reach the reward server at http://127\.0\.0\.1:9"):
        RemoteScorer("http://127.0.0.1:9")


class RedScorer:
    """A critic stand-in that scores an image by its decoded red channel, 1 + 4 * red / 255, and
    records each batch's size: a 192-item step through the server in seconds, with every answer
    traceable to the item it belongs to."""

    critic_version = "red@1"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def _score(self, image: Image.Image) -> DimensionScore:
        return DimensionScore(1 + 4 * image.getpixel((0, 0))[0] / 255, None)

    def score_gen(self, queries: Sequence[GenQuery], mode: ScoreMode = "expectation") -> list[GenScores]:
        self.batches.append(len(queries))
        return [GenScores(self._score(q.image), self._score(q.image)) for q in queries]

    def score_edit(self, queries: Sequence[EditQuery], mode: ScoreMode = "expectation") -> list[EditScores]:
        self.batches.append(len(queries))
        return [EditScores(self._score(q.edited), self._score(q.source)) for q in queries]


def test_a_step_larger_than_the_servers_limit_is_split_and_kept_in_order() -> None:
    """192 rollouts (the gpu profile's gen step) against a server that takes 16 items a request: 12
    requests, sent concurrently (the server's batches hold more than one request's items), and every
    answer back in its rollout's place."""
    red = RedScorer()
    server = AppServer(create_app(ServerSettings(max_items=16, max_batch=64), lambda: red))
    try:
        wait_ready(server.base_url)
        remote = RemoteScorer(server.base_url)
        assert remote.limits.max_items == 16
        queries = [GenQuery(Image.new("RGB", (8, 8), (i, 0, 0)), f"prompt {i}") for i in range(192)]
        scores = remote.score_gen(queries)
        assert remote.requests == 12 and sum(red.batches) == 192
        assert max(red.batches) > 16  # requests overlapped in the server's queue
        assert [s.instruction.score for s in scores] == [pytest.approx(1 + 4 * i / 255) for i in range(192)]
        edits = [
            EditQuery(Image.new("RGB", (8, 8), (i, 0, 0)), Image.new("RGB", (8, 8), (191 - i, 0, 0)), "x")
            for i in range(40)
        ]
        answered = remote.score_edit(edits)
        assert [s.execution.score for s in answered] == [
            pytest.approx(1 + 4 * (191 - i) / 255) for i in range(40)
        ]
        assert [s.consistency.score for s in answered] == [pytest.approx(1 + 4 * i / 255) for i in range(40)]
    finally:
        server.close()


def test_split_remote_scores_equal_in_process_scores(critic: CriticScorer) -> None:
    """The real tiny critic behind a server that takes one item a request: three requests, the same
    scores as the critic in this process."""
    server = AppServer(create_app(ServerSettings(max_items=1), lambda: critic))
    try:
        wait_ready(server.base_url)
        remote = RemoteScorer(server.base_url)
        queries = [
            GenQuery(Image.new("RGB", (32, 32), colour), "a square") for colour in ("red", "blue", "green")
        ]
        there, here = remote.score_gen(queries), critic.score_gen(queries)
        assert remote.requests == 3
        for local, answered in zip(here, there, strict=True):
            assert answered.instruction.score == pytest.approx(local.instruction.score)
            assert answered.quality.score == pytest.approx(local.quality.score)
    finally:
        server.close()


def item(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8), prompt: str = "p") -> GenItem:
    return GenItem(image=encode_image(Image.new("RGB", size, colour)), prompt=prompt)


def test_split_items_respects_items_bytes_and_pixels() -> None:
    items = [item((5, 0, 0), prompt=f"p{i}") for i in range(10)]  # one size each
    size = len(items[0].model_dump_json().encode()) + 1
    wide = Limits(
        max_items=4,
        max_body_bytes=10**6,
        max_image_bytes=10**6,
        max_image_pixels=10**6,
        max_request_pixels=10**6,
    )
    assert [len(c) for c in split_items(items, wide)] == [4, 4, 2]
    assert [x for c in split_items(items, wide) for x in c] == items
    by_bytes = wide.model_copy(update={"max_items": 64, "max_body_bytes": 1024 + 3 * size})
    assert [len(c) for c in split_items(items, by_bytes)] == [3, 3, 3, 1]
    by_pixels = wide.model_copy(update={"max_items": 64, "max_request_pixels": 5 * 64})
    assert [len(c) for c in split_items(items, by_pixels)] == [5, 5]
    big = [item((0, 0, 0), (20, 20)), *items[:2]]  # 400 pixels: alone, over the limit (the server says so)
    assert [len(c) for c in split_items(big, by_pixels)] == [1, 2]
