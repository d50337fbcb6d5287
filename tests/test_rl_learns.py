"""RL learns: the tiny SD3 trained through the Pipes trainer (`firm_assets.rl.train.train`, the
process the policy assets launch) on a learnable rule reward, the images' mean green, must end with
a higher mean reward than it started with; the same run with its advantages negated must not (a sign
error in the objective would pass every finite-loss test, not this one).

The reward is the green channel rather than brightness because the tiny SD3's random VAE hardly moves
luma (a latent shift of 2 moves it by about 0.02) while green follows the latents about ten times
more. Steps, group size and learning rate were chosen so the rise clears the margin by about twice
on the loaded 2-core machine (figures in firm_assets/rl/README.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

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
    prompts = home / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt_id": f"p{i}", "text": text, "source_path": None, "requirement": None}) + "\n"
            for i, text in enumerate(("a red cat", "a blue dog"))
        )
    )
    tracking = TrackingResource(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    nft = {
        "task": "gen",
        "pipeline_path": str(pipeline),
        "steps": STEPS,
        "prompts_per_step": 2,
        "group_size": 8,
        "sampling_steps": 2,
        "size": 32,
        "lora_rank": 4,
        "lora_alpha": 8,
        "learning_rate": 0.05,
        "checkpoint_every": STEPS,
    }
    return {
        "policy": "gen_rl_policy",
        "version": "learns",
        "task": "gen",
        "nft": nft,
        "prompts_file": str(prompts),
        "reward_fn": "firm_assets.rl.rule_rewards:greenness",
        "reward": {"reward_fn": "firm_assets.rl.rule_rewards:greenness"},
        "checkpoint_dir": str(home / "checkpoints"),
        "tracking_uri": tracking.uri(),
        "mlflow_run_id": tracking.create_run("firm-rl", "learns", {}),
        "grid_every": STEPS,
        "model_tags": {"policy_version": "learns"},
    }


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
    summary = train(learning_params(tmp_path, pipeline), lambda line: None, lambda summary: None)

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
