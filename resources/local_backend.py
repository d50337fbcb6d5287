"""What the chat backends that load weights into this process (transformers, vLLM's offline engine)
set up alike: the weights pinned to an identity, whether the model takes images, token usage, the chat
template variables, and a batch computed together."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from resources.chat import CallFailure, ChatRequest, Decoding, ModelRef, TokenUsage
from resources.weights import pinned


class LocalChatBackend(ABC):
    """Base of the in-process backends; a subclass loads its engine from `revision` (the pinned
    revision to load) after calling this `__init__`, and implements `generate`."""

    concurrent_calls = False  # one model in this process: a second batch would only contend for it

    def __init__(
        self,
        model_path: str,
        revision: str | None,
        backend: str,
        chat_template_kwargs: Mapping[str, Any] | None,
    ) -> None:
        from transformers import AutoConfig  # a backend's first use pays for importing transformers

        identity, self.revision = pinned(model_path, revision)
        self.model = ModelRef(model_id=model_path, revision=identity, backend=backend)
        self.usage = TokenUsage()
        # Extra variables for the chat template (Qwen3's `enable_thinking`): they change the prompt.
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        config = AutoConfig.from_pretrained(model_path, revision=self.revision)
        self.is_vision = getattr(config, "vision_config", None) is not None

    @abstractmethod
    def generate(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str]:
        """The assistant's answer text for each request, in order (`ChatBackend.generate`)."""

    def generate_each(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str | CallFailure]:
        """`generate`: the batch is computed together, so an error is the batch's (the stage narrows it)."""
        return list(self.generate(requests, decoding))
