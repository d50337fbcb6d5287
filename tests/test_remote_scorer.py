"""The RL trainer's reward function through a real `firm serve` app on loopback: the remote scorer
gives the same scores as the critic in-process, carries the server's critic version, and refuses a
server that changed critics mid-run."""

from __future__ import annotations

from pathlib import Path

import pytest
from loopback import AppServer, wait_ready
from PIL import Image

from firm_assets.critics.scoring import CriticScorer, EditQuery, GenQuery
from firm_assets.rl.critic_reward import critic_reward_fn
from firm_assets.rl.nft.records import Rollout
from firm_assets.rl.rewards import RewardConfig, edit_reward
from firm_assets.serving.app import create_app
from firm_assets.serving.remote import RemoteScorer
from firm_assets.serving.settings import ServerSettings
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
