"""RL learns: the tiny SD3 trained through the Pipes trainer (`firm_assets.rl.train.train`, the
process the policy assets launch) on a learnable rule reward, the images' mean green, must end with
a higher mean reward than it started with; the same run with its advantages negated must not (a sign
error in the objective would pass every finite-loss test, not this one).

The reward is the green channel rather than brightness because the tiny SD3's random VAE hardly moves
luma (a latent shift of 2 moves it by about 0.02) while green follows the latents about ten times
more. Steps, group size and learning rate were chosen so the rise clears the margin by about twice
on the loaded 2-core machine (figures in firm_assets/rl/README.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from rl_trainer_params import trainer_params

import firm_assets.rl.nft.loop as nft_loop
from firm_assets.rl.train import train
from resources.tiny_diffusion import build_tiny_diffusion
from resources.tracking import TrackingResource

STEPS = 40
WINDOW = 8  # steps averaged at each end
MARGIN = 0.004  # on the [0, 1] green scale; the learning run rises by about 0.009


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def learning_params(home: Path, pipeline: Path) -> dict:
    return trainer_params(
        home,
        pipeline,
        ["a red cat", "a blue dog"],
        "firm_assets.rl.rule_rewards:greenness",
        steps=STEPS,
        group_size=8,
        learning_rate=0.05,
        checkpoint_every=STEPS,
    )


@pytest.mark.parametrize(
    "negated",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.xfail(strict=True, reason="control: negated advantages must not learn"),
        ),
    ],
)
def test_reward_rises_on_a_learnable_reward(
    negated: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    if negated:  # the control: the loop's advantages with their sign flipped
        advantages = nft_loop.group_advantages
        monkeypatch.setattr(
            nft_loop,
            "group_advantages",
            lambda *args: [None if a is None else -a for a in advantages(*args)],
        )
    pipeline = build_tiny_diffusion(tmp_path / "diffusion")["tiny-sd3"]
    params = learning_params(tmp_path / "learns", pipeline)
    summary = train(params, lambda line: None, lambda summary: None)
    # every step's loss reached MLflow as the step ended (the StepTracker logs it there and then)
    history = (
        TrackingResource(tracking_uri=params["tracking_uri"])
        .client()
        .get_metric_history(params["mlflow_run_id"], "loss")
    )
    assert [metric.step for metric in history] == list(range(1, STEPS + 1))

    rewards = [step["metrics"]["reward_mean"] for step in summary["history"]]
    assert (
        len(rewards) == STEPS
        and summary["critic_source"] == "reward_fn:firm_assets.rl.rule_rewards:greenness"
    )
    start, end = float(np.mean(rewards[:WINDOW])), float(np.mean(rewards[-WINDOW:]))
    print(f"RL_LEARNS reward_start={start:.4f} reward_end={end:.4f} negated={negated}")
    assert end > start + MARGIN


def test_a_wrong_reward_path_is_a_clear_error() -> None:
    from firm_assets.rl.rule_rewards import load_rule_reward

    assert load_rule_reward("firm_assets.rl.rule_rewards:brightness").__name__ == "brightness"
    with pytest.raises(ValueError, match="must be 'module:function'"):
        load_rule_reward("firm_assets.rl.rule_rewards")
    with pytest.raises(ValueError, match="cannot be imported"):
        load_rule_reward("firm_assets.rl.rule_rewards:no_such_reward")
    with pytest.raises(ValueError, match="is not callable"):
        load_rule_reward("firm_assets.rl.rule_rewards:annotations")
