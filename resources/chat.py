"""The one model interface every curation stage uses: batched chat with images -> text,
and next-token probabilities over given tokens (for score-as-expectation); and the one place that
decides whether a failed call is worth trying again (`classify_failure`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image


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
    """Implemented by the transformers, vLLM and OpenAI-compatible backends. `concurrent_calls` says
    whether calls from several threads at once are safe and fill free capacity (a server's pool of
    request slots); a local engine that runs one batch at a time says False."""

    model: ModelRef
    concurrent_calls: bool

    def generate(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str]:
        """The assistant's answer text for each request, in order."""
        ...

    def next_token_probs(
        self, requests: Sequence[ChatRequest], assistant_prefixes: Sequence[str], tokens: Sequence[str]
    ) -> list[dict[str, float]]:
        """For each request, the probability of each of `tokens` as the next token after the
        assistant turn has begun with its prefix (not renormalised)."""
        ...


class InputImageError(ValueError):
    """An input image is missing or cannot be decoded: the request can never succeed as it is, so its
    failure is permanent (cached with this reason) rather than retried every run."""

    transient = False


def load_rgb(path: Path) -> Image.Image:
    """Decode an input image as RGB. A missing, unreadable or undecodable file is an InputImageError;
    other OS errors (too many open files, I/O errors) pass through as they may go away."""
    missing = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        if error.errno is not None and not isinstance(error, missing):
            raise  # a system error (EMFILE, EIO), not a decoder's complaint or a missing file
        cause: Exception = error
    except (Image.DecompressionBombError, SyntaxError, ValueError) as error:
        cause = error
    raise InputImageError(f"input image {path}: {type(cause).__name__}: {cause}") from cause


@dataclass(frozen=True)
class CallFailure:
    """Why one request failed, and whether it may succeed when tried again later."""

    reason: str
    transient: bool


def classify_failure(error: Exception) -> CallFailure:
    """Transient or permanent, for chat and image stages alike. An exception that declares `transient`
    keeps its word: InputImageError never is, the OpenAI-compatible backend's ChatAPIError is unless
    the server refused the request itself (a 4xx other than 408/409/429). Anything else (out of
    memory, timeouts, connection errors, a model's own exception) counts as transient: a failure is
    cached only when trying again cannot help, so a fix or a freed GPU is picked up by the next run."""
    declared = getattr(error, "transient", True)
    return CallFailure(f"{type(error).__name__}: {error}", declared if isinstance(declared, bool) else True)
