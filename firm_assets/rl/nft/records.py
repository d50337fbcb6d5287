"""What flows through a DiffusionNFT run: prompts in, rollouts out to the reward, step logs out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class PromptItem:
    """One prompt (and source image, for editing) that a group of rollouts shares."""

    prompt_id: str  # stable id; editing groups are keyed by (instruction, source sha)
    text: str
    source: Image.Image | None = None  # editing source image; None for generation


@dataclass(frozen=True)
class Rollout:
    """One sampled image and what produced it, as the reward reads it."""

    prompt_id: str
    text: str
    source: Image.Image | None  # for editing: the source as the policy saw it (fitted to size)
    image: Image.Image
    seed: int


@dataclass(frozen=True)
class RewardBatch:
    """The rewards of a step's rollouts and the monitors computed with them."""

    rewards: list[float | None]  # one per rollout, None = masked out of the advantage
    monitors: dict[str, float]  # e.g. held-out critic divergence; logged with the step


RewardFn = Callable[[list[Rollout]], RewardBatch]


@dataclass(frozen=True)
class StepLog:
    """One optimizer step's figures, as logged and checked for drift."""

    step: int
    loss: float  # NaN when every reward of the step was masked (no update was made)
    reward_mean: float | None
    reward_std: float | None
    masked_fraction: float
    grad_norm: float
    monitors: dict[str, float]  # image statistics + RewardBatch.monitors
    samples: list[Rollout]  # this process's rollouts (rank 0's share under data parallelism)
    images: int  # rollouts of the step on every rank


@dataclass(frozen=True)
class TrainResult:
    """What a finished training run leaves behind for the asset to register."""

    lora_dir: Path  # final trained LoRA (peft adapter folder)
    ema_lora_dir: Path  # EMA LoRA for evaluation
    final_step: int
    losses: list[float]  # per optimizer step, including steps before a resume
