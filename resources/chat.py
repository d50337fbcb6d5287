"""The one model interface every curation stage uses: batched chat with images -> text,
and next-token probabilities over given tokens (for score-as-expectation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ImagePart:
    """An image by local path; sha256 identifies its content for cache keys."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class ChatRequest:
    """One single-turn conversation: optional system text, then user text and images in order."""

    user: tuple[str | ImagePart, ...]
    system: str | None = None

    @property
    def images(self) -> list[ImagePart]:
        return [part for part in self.user if isinstance(part, ImagePart)]


@dataclass(frozen=True)
class Decoding:
    """Decoding parameters; part of every cache key. `regex`, when set, constrains the answer to
    strings matching it in full (guided decoding), so a structured answer always parses."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    regex: str | None = None

    def as_dict(self) -> dict[str, float | int | str | None]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "regex": self.regex,
        }


@dataclass(frozen=True)
class ModelRef:
    """A model's identity for lineage: id (hub id or path) and the revision of its weights."""

    model_id: str
    revision: str
    backend: str = field(default="transformers", compare=False)


class ChatBackend(Protocol):
    """Implemented by the transformers, vLLM and OpenAI-compatible backends."""

    model: ModelRef

    def generate(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str]:
        """The assistant's answer text for each request, in order."""
        ...

    def next_token_probs(
        self, requests: Sequence[ChatRequest], assistant_prefixes: Sequence[str], tokens: Sequence[str]
    ) -> list[dict[str, float]]:
        """For each request, the probability of each of `tokens` as the next token after the
        assistant turn has begun with its prefix (not renormalised)."""
        ...
