"""The settings of one DiffusionNFT run, and the two schedules that move the rollout and EMA adapters.

Defaults are the references' (NVlabs/DiffusionNFT `config/nft.py`, `config/base.py` and
`scripts/train_nft_sd3.py`; VisionXLab/FIRM-Reward `editing/config/kontext_nft_qwen3vl_8b.py` and
`editing/config/base.py`): NFT beta 1.0, base penalty 1e-4, LoRA 32/64, gradient clip 1, advantages
clipped to 5, rollout adapter decay min(0.001 * step, 0.5) (`decay_type = 1`), EMA decay 0.9 with
the warm-up min((1 + s) / (10 + s), 0.9), and the deterministic second-order DPM-Solver sampler
(`sample.solver = "dpm2"`, `sample.deterministic = True`).
"""

from __future__ import annotations

from typing import Literal

import pydantic

Solver = Literal["dpm_solver_2", "euler"]
# Settings that never change the trained weights: left out of the policy version, and free to change
# when a run resumes. Every other field (solver and schedules included) changes the version.
NOT_IN_VERSION = frozenset({"checkpoint_every", "micro_batch", "gradient_checkpointing"})


class NFTConfig(pydantic.BaseModel, frozen=True):
    """Hyper-parameters of one DiffusionNFT run (FIRM's public trainers: k = 12-24, 512 px,
    6-10 sampling steps, LoRA rank 32 / alpha 64, gradient clip 1, advantages clipped to 5)."""

    task: Literal["edit", "gen"]
    pipeline_path: str
    steps: int = pydantic.Field(ge=1)
    prompts_per_step: int = pydantic.Field(ge=1)
    group_size: int = pydantic.Field(ge=2)
    sampling_steps: int = pydantic.Field(ge=1)
    size: int = pydantic.Field(gt=0)
    learning_rate: float = pydantic.Field(gt=0)
    solver: Solver = "dpm_solver_2"
    lora_rank: int = pydantic.Field(default=32, ge=1)
    lora_alpha: int = pydantic.Field(default=64, ge=1)
    nft_beta: float = pydantic.Field(default=1.0, gt=0)
    # rollout ("old") adapter: decay after update s = 0 before `old_decay_flat`, then
    # min((s - flat) * rate, max): on-policy at the start, a slower average later
    old_decay_rate: float = pydantic.Field(default=0.001, ge=0)
    old_decay_max: float = pydantic.Field(default=0.5, ge=0, lt=1)
    old_decay_flat: int = pydantic.Field(default=0, ge=0)
    ema_decay: float = pydantic.Field(default=0.9, ge=0, lt=1)  # the cap of the EMA warm-up
    base_penalty: float = pydantic.Field(default=1e-4, ge=0)
    grad_clip: float = pydantic.Field(default=1.0, gt=0)
    advantage_clip: float = pydantic.Field(default=5.0, gt=0)
    seed: int = 0
    checkpoint_every: int = pydantic.Field(default=1, ge=1)
    # memory: samples of a group per forward/backward pass (None: the whole group), and activation
    # checkpointing in the transformer; neither changes the gradient, only what it costs
    micro_batch: int | None = pydantic.Field(default=None, ge=1)
    gradient_checkpointing: bool = False
    device: str = "cpu"
    dtype: str = "float32"


def rollout_decay(config: NFTConfig, step: int) -> float:
    """Decay of the rollout adapter after update `step` (1-based): old <- d old + (1 - d) trained.
    DiffusionNFT's `return_decay` (scripts/train_nft_sd3.py), whose decay_type 1 is the default."""
    if step < config.old_decay_flat:
        return 0.0
    return min((step - config.old_decay_flat) * config.old_decay_rate, config.old_decay_max)
