"""The `models` Dagster resource: turns the chosen profile into loaded backends, once per process.

On a profile with `release_between_roles` one GPU holds the roles' models in turn: loading a model
that is not loaded yet first releases every other one (a vLLM engine shut down, CUDA memory handed
back), so the editor, the captioner/judge and the planner never sit on the GPU together. Roles that
share a model config (captioner and judge on one VLM) share one loaded backend, and a stage that
asks for the model already loaded reloads nothing."""

from __future__ import annotations

import dataclasses
import gc
import sys
from pathlib import Path
from typing import Any

from dagster import Config, ConfigurableResource, InitResourceContext

from resources.chat import ChatBackend
from resources.home import firm_home
from resources.profiles import (
    ALONE_GPU_MEMORY_UTILIZATION,
    DEFAULT_PROFILE,
    TINY_PREFIX,
    ChatModelConfig,
    ImageModelConfig,
    Profile,
    get_profile,
)

CHAT_ROLES = ("captioner", "judge", "planner")
_LOADED: dict[Any, Any] = {}


def tiny_models_dir() -> Path:
    """Where the built tiny models live under the firm home."""
    return firm_home() / "models" / "tiny"


def ensure_tiny_models() -> Path:
    """Build the tiny models offline if this FIRM_HOME does not have them yet (seconds)."""
    from resources.tiny_diffusion import build_tiny_diffusion
    from resources.tiny_models import build_tiny_models

    dest = tiny_models_dir()
    build_tiny_models(dest)
    build_tiny_diffusion(dest)
    return dest


def resolve_model_path(model: str) -> str:
    """`tiny:NAME` -> the built tiny model folder; anything else (hub id, local path) unchanged."""
    if not model.startswith(TINY_PREFIX):
        return model
    path = tiny_models_dir() / model.removeprefix(TINY_PREFIX)
    if not path.exists():
        ensure_tiny_models()
    return str(path)


def release_loaded() -> None:
    """Release every loaded backend: each is closed (a vLLM engine shut down, model weights dropped),
    then garbage is collected and PyTorch's cached CUDA blocks are handed back, so the next model
    finds the GPU memory free."""
    for key in list(_LOADED):
        _LOADED.pop(key).close()
    gc.collect()
    torch = sys.modules.get("torch")  # a process that never imported torch holds no CUDA memory
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _make_room(cache_key: Any, release_others: bool) -> None:
    """Before loading the backend under `cache_key`: release the others when the profile says so."""
    if release_others and cache_key not in _LOADED and _LOADED:
        release_loaded()


def vllm_memory_share(config: ChatModelConfig, alone: bool) -> float:
    """The vLLM engine's share of GPU memory for a role: its own setting, else 0.85 when the engine
    has the GPU to itself; engines that share the GPU must each be given theirs."""
    if config.gpu_memory_utilization is not None:
        if not 0 < config.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], not {config.gpu_memory_utilization}")
        return config.gpu_memory_utilization
    if alone:
        return ALONE_GPU_MEMORY_UTILIZATION
    raise ValueError(
        f"the vLLM role on {config.model!r} shares the GPU with other roles' models "
        "(release_between_roles is off): set its gpu_memory_utilization in the profile"
    )


def load_chat_backend(config: ChatModelConfig, release_others: bool = False) -> ChatBackend:
    """Load (or reuse, within this process) the backend a chat role's config names; with
    `release_others`, any other loaded backend is released first."""
    cache_key = ("chat", config)
    _make_room(cache_key, release_others)
    if cache_key not in _LOADED:
        path = resolve_model_path(config.model)
        template_kwargs = config.chat_template_kwargs()
        if config.backend == "transformers":
            from resources.transformers_backend import TransformersBackend

            backend = TransformersBackend(
                path,
                config.revision,
                config.device,
                config.dtype,
                config.batch_size,
                chat_template_kwargs=template_kwargs,
            )
        elif config.backend == "vllm":
            from resources.vllm_backend import VllmBackend

            backend = VllmBackend(
                path,
                config.revision,
                config.dtype,
                config.tensor_parallel_size,
                gpu_memory_utilization=vllm_memory_share(config, alone=release_others),
                chat_template_kwargs=template_kwargs,
            )
        elif config.backend == "openai":
            from resources.openai_backend import OpenAIBackend

            if not config.base_url:
                raise ValueError("the openai backend needs base_url")
            backend = OpenAIBackend(
                config.base_url,
                config.model,
                revision=config.revision,
                server=config.server,
                api_key_env=config.api_key_env,
                concurrency=config.concurrency,
                max_retries=config.max_retries,
                timeout_s=config.timeout_s,
                chat_template_kwargs=template_kwargs,
            )
        else:
            raise ValueError(f"unknown chat backend {config.backend!r}")
        backend.model = dataclasses.replace(backend.model, model_id=config.model)
        _LOADED[cache_key] = backend
    return _LOADED[cache_key]


def load_image_backend(config: ImageModelConfig, release_others: bool = False):
    """Load (or reuse) a diffusers pipeline for an editor or generator config; with `release_others`,
    any other loaded backend is released first."""
    cache_key = ("image", config.model, config.revision, config.device, config.dtype)
    _make_room(cache_key, release_others)
    if cache_key not in _LOADED:
        from resources.diffusion import DiffusionBackend

        backend = DiffusionBackend(
            resolve_model_path(config.model), config.revision, config.device, config.dtype
        )
        backend.model = dataclasses.replace(backend.model, model_id=config.model)
        _LOADED[cache_key] = backend
    return _LOADED[cache_key]


class ChatRoleConfig(Config):
    """Run config for one chat role: each field set replaces the profile's (`ChatModelConfig` says
    what each means), so a role can be sent to its own server and model with its own concurrency,
    retries and timeout."""

    backend: str | None = None
    model: str | None = None
    revision: str | None = None
    base_url: str | None = None
    server: str | None = None
    api_key_env: str | None = None
    concurrency: int | None = None
    max_retries: int | None = None
    timeout_s: float | None = None
    batch_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    thinking: bool | None = None


class ImageRoleConfig(Config):
    """Run config for the editors or the generators: each field set replaces the profile's in every
    editor (generator) it lists (the shipped profiles list one of each)."""

    model: str | None = None
    revision: str | None = None
    steps: int | None = None
    guidance: float | None = None
    size: int | None = None
    device: str | None = None
    dtype: str | None = None


def _set_fields(config: Config | None) -> dict[str, Any]:
    return (
        {}
        if config is None
        else {key: value for key, value in config.model_dump().items() if value is not None}
    )


class ModelsResource(ConfigurableResource):
    """Which models do the work. `profile` picks a named set (the packaged `profiles.yaml`, extended
    by the file FIRM_PROFILES_FILE names); `captioner`, `judge`, `planner`, `editor` and `generator`
    change one role's settings (its own server, model, concurrency ...). The older fields override one
    role's model, point every chat role at one OpenAI-compatible server (`chat_server`: `vllm` or
    `openai`), or turn the planner's Qwen3 thinking on or off (`planner_thinking`); a role's own block
    is applied after them."""

    profile: str = DEFAULT_PROFILE
    captioner_model: str | None = None
    judge_model: str | None = None
    planner_model: str | None = None
    chat_backend: str | None = None
    base_url: str | None = None
    chat_server: str | None = None
    critic_base: str | None = None
    planner_thinking: bool | None = None
    captioner: ChatRoleConfig | None = None
    judge: ChatRoleConfig | None = None
    planner: ChatRoleConfig | None = None
    editor: ImageRoleConfig | None = None
    generator: ImageRoleConfig | None = None

    def settings(self) -> Profile:
        """The profile with this resource's overrides applied."""
        profile = get_profile(self.profile)
        changes: dict[str, Any] = {}
        for role in CHAT_ROLES:
            config: ChatModelConfig = getattr(profile, role)
            override = {
                key: value
                for key, value in {
                    "model": getattr(self, f"{role}_model"),
                    "backend": self.chat_backend,
                    "base_url": self.base_url,
                    "server": self.chat_server,
                }.items()
                if value
            }
            if role == "planner" and self.planner_thinking is not None:
                override["thinking"] = self.planner_thinking
            override.update(_set_fields(getattr(self, role)))
            changes[role] = dataclasses.replace(config, **override)
        for name, block in (("editors", self.editor), ("generators", self.generator)):
            if fields := _set_fields(block):
                changes[name] = tuple(
                    dataclasses.replace(config, **fields) for config in getattr(profile, name)
                )
        if self.critic_base:
            changes["critic"] = dataclasses.replace(profile.critic, base=self.critic_base)
        return dataclasses.replace(profile, **changes)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """As a run starts: the profile's CPU thread count for torch in this process, when it sets one
        (torch is imported only then, so loading the definitions still imports no model stack)."""
        threads = self.settings().cpu_threads
        if threads:
            import torch

            torch.set_num_threads(threads)

    def release_for_subprocess(self) -> None:
        """Before a training subprocess (critic SFT, RL) takes the GPU: on a profile whose roles hold
        the GPU in turn, hand back every model this process has loaded; elsewhere keep them."""
        if self.settings().release_between_roles:
            release_loaded()

    def chat(self, role: str) -> ChatBackend:
        """The chat backend for one role (captioner, judge, planner), loaded per the profile."""
        if role not in CHAT_ROLES:
            raise ValueError(f"unknown chat role {role!r}; one of {CHAT_ROLES}")
        settings = self.settings()
        return load_chat_backend(getattr(settings, role), settings.release_between_roles)

    def image_backend(self, config: ImageModelConfig):
        """The image backend for one configured model, loaded per the profile."""
        return load_image_backend(config, self.settings().release_between_roles)
