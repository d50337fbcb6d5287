"""The settings of one DiffusionNFT run."""

from __future__ import annotations

from typing import Literal

import pydantic


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
    lora_rank: int = pydantic.Field(default=32, ge=1)
    lora_alpha: int = pydantic.Field(default=64, ge=1)
    learning_rate: float = pydantic.Field(gt=0)
    nft_beta: float = pydantic.Field(gt=0)
    old_decay: float = pydantic.Field(ge=0, le=1)
    ema_decay: float = pydantic.Field(ge=0, le=1)
    base_penalty: float = pydantic.Field(ge=0)
    grad_clip: float = pydantic.Field(default=1.0, gt=0)
    advantage_clip: float = pydantic.Field(default=5.0, gt=0)
    seed: int = 0
    checkpoint_every: int = pydantic.Field(default=1, ge=1)
    device: str = "cpu"
    dtype: str = "float32"
