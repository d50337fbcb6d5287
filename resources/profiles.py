"""Named model profiles (profiles.yaml): which backend and model each role uses."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

DEFAULT_PROFILE = "cpu-tiny"
TINY_PREFIX = "tiny:"


@dataclass(frozen=True)
class ChatModelConfig:
    """A chat role (captioner, judge, planner): backend kind, model id or path, and its knobs.

    The `openai` backend's own: `base_url`; `server` (`vllm` or `openai`: only a vLLM server is sent
    vLLM's request extensions); `api_key_env` (the environment variable holding the key); requests in
    flight at once (`concurrency`), SDK retries per request and the per-request `timeout_s`. Its
    `batch_size` is how many requests a stage hands over per call: make it a few times `concurrency`,
    as the pool refills only from the batch it has."""

    backend: str
    model: str
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8
    tensor_parallel_size: int = 1
    base_url: str | None = None
    revision: str | None = None
    server: str = "vllm"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 4
    timeout_s: float = 120.0


@dataclass(frozen=True)
class ImageModelConfig:
    """An editor or text-to-image generator configuration."""

    model: str
    steps: int
    guidance: float
    size: int
    device: str = "cpu"
    dtype: str = "float32"
    revision: str | None = None


@dataclass(frozen=True)
class CriticConfig:
    """The critic's base model, its answer budget at inference, and recipe overrides for this profile."""

    base: str
    max_new_tokens: int
    recipe: dict[str, Any]


@dataclass(frozen=True)
class PolicyConfig:
    """An RL policy's base diffusers pipeline and its DiffusionNFT settings on this profile (run config
    of the policy asset overrides single settings; firm_assets/rl/settings.py merges them)."""

    model: str
    nft: dict[str, Any]
    revision: str | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    captioner: ChatModelConfig
    judge: ChatModelConfig
    planner: ChatModelConfig
    editors: tuple[ImageModelConfig, ...]
    generators: tuple[ImageModelConfig, ...]
    seeds: tuple[int, ...]
    max_new_tokens: dict[str, int]
    guided: bool
    score_reader: str
    max_attempts: int
    critic: CriticConfig
    rl: dict[str, PolicyConfig]  # "edit" and "gen"


def _profile(name: str, data: dict[str, Any]) -> Profile:
    return Profile(
        name=name,
        captioner=ChatModelConfig(**data["captioner"]),
        judge=ChatModelConfig(**data["judge"]),
        planner=ChatModelConfig(**data["planner"]),
        editors=tuple(ImageModelConfig(**e) for e in data["editors"]),
        generators=tuple(ImageModelConfig(**g) for g in data["generators"]),
        seeds=tuple(data["seeds"]),
        max_new_tokens=dict(data["max_new_tokens"]),
        guided=bool(data["guided"]),
        score_reader=data["score_reader"],
        max_attempts=int(data["max_attempts"]),
        critic=CriticConfig(**data["critic"]),
        rl={task: PolicyConfig(**policy) for task, policy in data["rl"].items()},
    )


@cache
def profiles() -> dict[str, Profile]:
    data = yaml.safe_load(resources.files("resources").joinpath("profiles.yaml").read_text())
    return {name: _profile(name, body) for name, body in data.items()}


def get_profile(name: str) -> Profile:
    try:
        return profiles()[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(profiles())}") from None
