"""The one model interface every curation stage uses: batched chat with images -> text,
and next-token probabilities over given tokens (for score-as-expectation); and the one place that
decides whether a failed call is worth trying again (`classify_failure`)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image


@dataclass(frozen=True)
class ImagePart:
    """An image by local path, or already in memory (`image`: a rollout or an uploaded image that has no
    file and needs none); sha256 identifies its content for cache keys, so equality and hashing look at
    the path and the sha only."""

    path: Path | None
    sha256: str
    image: Image.Image | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.image is None):
            raise ValueError("an ImagePart has either a path or an in-memory image, not both or neither")

    @classmethod
    def from_image(cls, image: Image.Image) -> ImagePart:
        """An in-memory part; its sha256 covers mode, size and pixels (no encoding needed). Decoding a
        lazily opened, truncated file happens here and raises InputImageError."""
        try:
            pixels = image.tobytes()
        except (OSError, ValueError, SyntaxError) as error:
            raise InputImageError(f"input image: {type(error).__name__}: {error}") from error
        digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode() + pixels)
        return cls(path=None, sha256=digest.hexdigest(), image=image)

    @property
    def label(self) -> str:
        """How error messages name the image: its path, or its sha for an in-memory image."""
        return str(self.path) if self.path is not None else f"<in-memory {self.sha256[:12]}>"

    def encoded(self) -> tuple[bytes, str]:
        """The image as file bytes and a file name for its type: a file's own bytes, an in-memory
        image as PNG (lossless)."""
        if self.path is not None:
            try:
                return self.path.read_bytes(), self.path.name
            except (FileNotFoundError, IsADirectoryError) as error:
                raise InputImageError(f"input image {self.path}: {type(error).__name__}: {error}") from error
        buffer = io.BytesIO()
        try:
            load_rgb(self).save(buffer, format="PNG")
        except (OSError, ValueError, SystemError) as error:
            raise InputImageError(f"input image {self.label}: {type(error).__name__}: {error}") from error
        return buffer.getvalue(), "image.png"


@dataclass(frozen=True)
class ChatRequest:
    """One single-turn conversation: optional system text, then user text and images in order."""

    user: tuple[str | ImagePart, ...]
    system: str | None = None

    @property
    def images(self) -> list[ImagePart]:
        """The request's images, for backends that take them apart from the text."""
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
        """Decoding settings as plain values, for cache keys and logged params."""
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


class TokenUsage:
    """Tokens a backend has read (prompt) and written (answer) since it was loaded, summed over
    threads; a stage reads it before and after its calls, so cache hits cost no tokens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tokens_in = 0
        self.tokens_out = 0

    def add(self, tokens_in: int, tokens_out: int) -> None:
        """Adds one call's tokens; safe from several threads."""
        with self._lock:
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out

    def snapshot(self) -> tuple[int, int]:
        """Totals so far, read consistently while calls run."""
        with self._lock:
            return self.tokens_in, self.tokens_out


@dataclass(frozen=True)
class TokenProbs:
    """The probabilities of the asked-for tokens at one generated position, read from the same forward
    pass that chose the token there; `offset` is where that token's text starts in the answer."""

    offset: int
    probs: dict[str, float]


@dataclass(frozen=True)
class ProbedAnswer:
    """An answer as generated (not stripped, so offsets hold) and, for each generated position whose
    token is one of the asked-for tokens, their probabilities there (empty when the backend could not
    read them)."""

    text: str
    positions: tuple[TokenProbs, ...]


class ChatBackend(Protocol):
    """Implemented by the transformers, vLLM and OpenAI-compatible backends. `concurrent_calls` says
    whether calls from several threads at once are safe and fill free capacity (a server's pool of
    request slots); a local engine that runs one batch at a time says False. `chat_template_kwargs`
    are the extra chat template variables the role renders its prompts with (Qwen3's
    `enable_thinking`): they change the prompt, so stages put them in the cache key. `usage` counts
    the tokens its calls read and wrote (cost accounting); `on_gpu` says whether they ran on a local
    CUDA device (a server's GPU time is the server's)."""

    model: ModelRef
    concurrent_calls: bool
    chat_template_kwargs: dict[str, Any]
    usage: TokenUsage
    on_gpu: bool

    def close(self) -> None:
        """Release the model (and its GPU memory, an engine's processes, a client's connections)."""
        ...

    def generate(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str]:
        """The assistant's answer text for each request, in order."""
        ...

    def generate_each(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str | CallFailure]:
        """`generate`'s answers, where a backend that sends each request on its own (a server) returns a
        failed request's classified failure in its place, so one refusal costs that request only. A
        backend that computes a batch together raises for the batch (the cached stage narrows it)."""
        ...

    def next_token_probs(
        self, requests: Sequence[ChatRequest], assistant_prefixes: Sequence[str], tokens: Sequence[str]
    ) -> list[dict[str, float]]:
        """For each request, the probability of each of `tokens` as the next token after the
        assistant turn has begun with its prefix (not renormalised)."""
        ...

    def generate_probed(
        self, requests: Sequence[ChatRequest], decoding: Decoding, tokens: Sequence[str]
    ) -> list[ProbedAnswer]:
        """Generate as `generate` does, and in the same call read the probabilities of `tokens` (single
        tokens, e.g. the score digits) wherever the answer wrote one of them: the model's distribution
        there (not renormalised, before any guided-decoding mask), so a score can be read as an
        expectation without a second pass over the prompt and answer."""
        ...


class InputImageError(ValueError):
    """An input image is missing or cannot be decoded: the request can never succeed as it is, so its
    failure is permanent (cached with this reason) rather than retried every run."""

    transient = False


def load_rgb(source: Path | ImagePart) -> Image.Image:
    """Decode an input image (a file, or an image part by path or in memory) as RGB. A missing,
    unreadable, undecodable or empty image is an InputImageError; other OS errors (too many open
    files, I/O errors) pass through as they may go away."""
    if isinstance(source, ImagePart) and source.image is not None:
        return _in_memory_rgb(source.image, source.label)
    path = source.path if isinstance(source, ImagePart) else source
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


def _in_memory_rgb(image: Image.Image, label: str) -> Image.Image:
    """An in-memory image as RGB; an empty one, or one whose lazy decoding fails, is an InputImageError."""
    if image.width < 1 or image.height < 1:
        raise InputImageError(f"input image {label}: empty ({image.width}x{image.height})")
    try:
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise InputImageError(f"input image {label}: {type(error).__name__}: {error}") from error


@dataclass(frozen=True)
class CallFailure:
    """Why one request failed, whether it may succeed when tried again later, and the error itself."""

    reason: str
    transient: bool
    error: Exception = field(compare=False, repr=False)


def classify_failure(error: Exception) -> CallFailure:
    """Transient or permanent, for chat and image stages alike. An exception that declares `transient`
    keeps its word: InputImageError never is, the OpenAI-compatible backend's ChatAPIError is unless
    the server refused the request itself (a 4xx other than 408/409/429). Anything else (out of
    memory, timeouts, connection errors, a model's own exception) counts as transient: a failure is
    cached only when trying again cannot help, so a fix or a freed GPU is picked up by the next run."""
    declared = getattr(error, "transient", True)
    transient = declared if isinstance(declared, bool) else True
    return CallFailure(f"{type(error).__name__}: {error}", transient, error)
