"""Rule-based rewards a policy can be trained on instead of a critic: plain Python callables named by
import path in run config (`reward_fn: "firm_assets.rl.rule_rewards:brightness"`). A reward function
takes the step's rollouts and returns one reward per rollout, None to mask one out of the advantage
(never a made-up number). Users add their own the same way: any importable `module:function`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import numpy as np

from firm_assets.rl.monitors import image_statistics
from firm_assets.rl.nft.records import RewardBatch, RewardFn, Rollout

RuleReward = Callable[[list[Rollout]], Sequence[float | None]]


def brightness(rollouts: list[Rollout]) -> list[float | None]:
    """Mean luma of each image in [0, 1]: a reward any image policy can learn to raise."""
    return [image_statistics([r.image])["brightness"] for r in rollouts]


def load_rule_reward(path: str) -> RuleReward:
    """The callable at `module:function`, or a clear error naming what is missing."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"reward_fn must be 'module:function', got {path!r}")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward_fn {path!r} cannot be imported: {error}") from error
    if not callable(function):
        raise ValueError(f"reward_fn {path!r} is not callable")
    return function


def rule_reward_fn(path: str) -> RewardFn:
    """The trainer's reward function from a named rule reward (no monitors of its own)."""
    function = load_rule_reward(path)

    def reward_fn(rollouts: list[Rollout]) -> RewardBatch:
        return RewardBatch(list(function(rollouts)), {})

    return reward_fn


def greenness(rollouts: list[Rollout]) -> list[float | None]:
    """Mean green channel of each image in [0, 1] (the share of green in the picture)."""
    return [float(np.asarray(r.image.convert("RGB"))[..., 1].mean()) / 255 for r in rollouts]
