"""Named model profiles (profiles.yaml): which backend and model each role uses."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

DEFAULT_PROFILE = "cpu-tiny"
TINY_PREFIX = "tiny:"
# `${NAME}` or `${NAME:-default}` in a profile's string values: read from the environment when the
# profile is loaded, so one profile serves whatever small models a machine has (`gpu-small`).
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# vLLM's share of GPU memory for an engine that has the GPU to itself (release_between_roles).
ALONE_GPU_MEMORY_UTILIZATION = 0.85


@dataclass(frozen=True)
class ChatModelConfig:
    """A chat role (captioner, judge, planner): backend kind, model id or path, and its knobs.

    The `openai` backend's own: `base_url`; `server` (`vllm` or `openai`: only a vLLM server is sent
    vLLM's request extensions); `api_key_env` (the environment variable holding the key); requests in
    flight at once (`concurrency`), SDK retries per request and the per-request `timeout_s`. Its
    `batch_size` is how many requests a stage hands over per call: make it a few times `concurrency`,
    as the pool refills only from the batch it has.

    `gpu_memory_utilization` is the vLLM engine's share of GPU memory (default 0.85, only where the
    profile releases other roles' models first). `thinking` is Qwen3's chat template switch
    (`enable_thinking`); unset sends nothing, so templates without it render as before."""

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
    gpu_memory_utilization: float | None = None
    thinking: bool | None = None

    def chat_template_kwargs(self) -> dict[str, Any]:
        """The variables this role adds to the chat template (they change the prompt)."""
        return {} if self.thinking is None else {"enable_thinking": self.thinking}


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
    # One GPU holds the roles' models in turn: loading one releases the others (resources/models.py).
    release_between_roles: bool = False
    # Torch's CPU threads in a run's process (unset: torch's default, one per core). Models too small
    # to split an operation across cores only pay for the threads' hand-offs (docs/bench.md, P1).
    cpu_threads: int | None = None


def expand_env(value: Any) -> Any:
    """`value` with every `${NAME}` / `${NAME:-default}` in its strings read from the environment;
    a variable that is unset and has no default is an error naming it."""
    if isinstance(value, dict):
        return {key: expand_env(item) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item) for item in value]
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if os.environ.get(name):
            return os.environ[name]
        if default is None:
            raise ValueError(f"profile value {value!r} needs the environment variable {name}, which is unset")
        return default

    return ENV_REFERENCE.sub(lookup, value)


def _profile(name: str, data: dict[str, Any]) -> Profile:
    data = expand_env(data)
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
        release_between_roles=bool(data.get("release_between_roles", False)),
        cpu_threads=data.get("cpu_threads"),
    )


@cache
def _profile_data() -> dict[str, Any]:
    return yaml.safe_load(resources.files("resources").joinpath("profiles.yaml").read_text())


def get_profile(name: str) -> Profile:
    """The named profile, its `${...}` values read from the environment now."""
    data = _profile_data()
    if name not in data:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(data)}")
    return _profile(name, data[name])
