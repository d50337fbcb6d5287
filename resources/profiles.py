"""Named model profiles (profiles.yaml): which backend and model each role uses.

A user keeps their own profiles in a YAML file named by FIRM_PROFILES_FILE (`firm run --profiles`):
a profile there with a packaged profile's name is merged over it, and a new one may start from
another with `extends: NAME`; mappings merge key by key, anything else (a list, a value) replaces."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PROFILE = "cpu-tiny"
PROFILES_FILE_ENV = "FIRM_PROFILES_FILE"
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
    # where the in-process critic scores the rollouts (e.g. "cuda:1", a second GPU, so the policy's
    # activations have the first to themselves); empty: the policy's own device
    critic_device: str = ""


@dataclass(frozen=True)
class Profile:
    """One named set of model choices: which model plays each role."""

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


def merged(base: Any, over: Any) -> Any:
    """`over` laid on `base`: mappings merge key by key (recursively), anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{key: merged(base.get(key), value) for key, value in over.items()}}
    return over


@cache
def _packaged_profiles() -> dict[str, Any]:
    return yaml.safe_load(resources.files("resources").joinpath("profiles.yaml").read_text())


@cache
def _user_profiles(path: str) -> dict[str, Any]:
    """The profiles of a user's file, each resolved against the packaged ones (see the module docstring)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read the profiles file {path} ({PROFILES_FILE_ENV}): {error}") from error
    if not isinstance(data, dict) or not all(isinstance(value, dict) for value in data.values()):
        raise ValueError(f"the profiles file {path} must map profile names to mappings")
    return data


def profile_data() -> dict[str, dict[str, Any]]:
    """Every profile's raw settings: the packaged ones, with the user's file (if any) laid over them."""
    profiles = dict(_packaged_profiles())
    path = os.environ.get(PROFILES_FILE_ENV)
    user = _user_profiles(path) if path else {}
    for name, data in user.items():
        data = dict(data)
        parent = data.pop("extends", None)
        if parent is not None and parent not in profiles:
            raise ValueError(f"profile {name!r} in {path} extends {parent!r}, which is not a profile")
        profiles[name] = merged(profiles[parent] if parent is not None else profiles.get(name, {}), data)
    return profiles


def get_profile(name: str) -> Profile:
    """The named profile, its `${...}` values read from the environment now."""
    data = profile_data()
    if name not in data:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(data)}")
    try:
        return _profile(name, data[name])
    except (KeyError, TypeError) as error:
        raise ValueError(f"profile {name!r} is incomplete or has an unknown setting: {error}") from error
