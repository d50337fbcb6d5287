"""The `models` Dagster resource: turns the chosen profile into loaded backends, once per process."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource

from resources.chat import ChatBackend
from resources.home import firm_home
from resources.profiles import (
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


def load_chat_backend(config: ChatModelConfig) -> ChatBackend:
    """Load (or reuse, within this process) the backend a chat role's config names."""
    cache_key = ("chat", config)
    if cache_key not in _LOADED:
        path = resolve_model_path(config.model)
        if config.backend == "transformers":
            from resources.transformers_backend import TransformersBackend

            backend = TransformersBackend(
                path, config.revision, config.device, config.dtype, config.batch_size
            )
        elif config.backend == "vllm":
            from resources.vllm_backend import VllmBackend

            backend = VllmBackend(path, config.revision, config.dtype, config.tensor_parallel_size)
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
            )
        else:
            raise ValueError(f"unknown chat backend {config.backend!r}")
        backend.model = dataclasses.replace(backend.model, model_id=config.model)
        _LOADED[cache_key] = backend
    return _LOADED[cache_key]


def load_image_backend(config: ImageModelConfig):
    """Load (or reuse) a diffusers pipeline for an editor or generator config."""
    cache_key = ("image", config.model, config.revision, config.device, config.dtype)
    if cache_key not in _LOADED:
        from resources.diffusion import DiffusionBackend

        backend = DiffusionBackend(
            resolve_model_path(config.model), config.revision, config.device, config.dtype
        )
        backend.model = dataclasses.replace(backend.model, model_id=config.model)
        _LOADED[cache_key] = backend
    return _LOADED[cache_key]


class ModelsResource(ConfigurableResource):
    """Which models do the work. `profile` picks a named set; the optional fields override one role's
    model or point every chat role at an OpenAI-compatible server (`chat_server`: `vllm` or `openai`)."""

    profile: str = DEFAULT_PROFILE
    captioner_model: str | None = None
    judge_model: str | None = None
    planner_model: str | None = None
    chat_backend: str | None = None
    base_url: str | None = None
    chat_server: str | None = None
    critic_base: str | None = None

    def settings(self) -> Profile:
        """The profile with this resource's overrides applied."""
        profile = get_profile(self.profile)
        changes = {}
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
            changes[role] = dataclasses.replace(config, **override)
        if self.critic_base:
            changes["critic"] = dataclasses.replace(profile.critic, base=self.critic_base)
        return dataclasses.replace(profile, **changes)

    def chat(self, role: str) -> ChatBackend:
        if role not in CHAT_ROLES:
            raise ValueError(f"unknown chat role {role!r}; one of {CHAT_ROLES}")
        return load_chat_backend(getattr(self.settings(), role))

    def image_backend(self, config: ImageModelConfig):
        return load_image_backend(config)
