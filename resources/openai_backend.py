"""ChatBackend over any OpenAI-compatible chat-completions endpoint (`vllm serve`, hosted APIs), so a
shared inference server can do the work instead of weights loaded in this process. Requests run in
parallel up to a bound; transient failures are retried with backoff, permanent ones fail at once."""

from __future__ import annotations

import base64
import math
import mimetypes
import os
import random
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from resources.chat import ChatRequest, Decoding, ImagePart, InputImageError, ModelRef
from resources.messages import chat_messages

# Worth another try: the server was busy, overloaded, restarting or lost the request.
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# Worth another try on the client side: nothing (complete) came back.
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


class ChatAPIError(RuntimeError):
    """The server refused a request (or kept failing until the retries ran out); carries its message."""

    def __init__(self, status_code: int | None, message: str) -> None:
        self.status_code = status_code
        self.message = message
        super().__init__(f"chat completions failed ({status_code or 'no response'}): {message}")

    @property
    def transient(self) -> bool:
        """Permanent only when the server refused the request itself (a 4xx it would repeat); no
        response, a 5xx or a busy signal after the retries, or a malformed answer may pass later."""
        status = self.status_code
        return status is None or status in RETRYABLE_STATUS or not 400 <= status < 500


def image_mime(data: bytes, name: str) -> str:
    """The image's MIME type from its leading bytes, else from its file name; servers decode the image
    from the bytes, but hosted APIs check the declared type."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def image_data_url(part: ImagePart) -> str:
    """The image file inline as a base64 `data:` URL: the server need not share this machine's disk."""
    try:
        data = part.path.read_bytes()
    except (FileNotFoundError, IsADirectoryError) as error:
        raise InputImageError(f"input image {part.path}: {type(error).__name__}: {error}") from error
    return f"data:{image_mime(data, part.path.name)};base64,{base64.b64encode(data).decode('ascii')}"


def _image_url_content(part: ImagePart) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": image_data_url(part)}}


def _retry_after_s(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (Retry-After as seconds or an HTTP date), if it said."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_message(response: httpx.Response) -> str:
    """The server's own explanation: OpenAI's {"error": {"message"}}, vLLM's older {"message"}, or text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
        if body.get("message"):
            return str(body["message"])
    return response.text.strip() or response.reason_phrase


class OpenAIBackend:
    """Batched chat and next-token probabilities through `POST {base_url}/chat/completions`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        revision: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 4,
        timeout_s: float = 120.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        top_logprobs: int = 20,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.served_model = model
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.top_logprobs = top_logprobs
        self.model = ModelRef(model, revision or "api", backend="openai")
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._client = httpx.Client(
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {key}"},
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        # One pool for the backend, not one per call, so the bound holds across concurrent callers too.
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="openai-backend")
        self._closed = threading.Event()

    def generate(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str]:
        """The assistant's answer for each request, stripped like the transformers backend's.

        With decoding.regex the request carries vLLM's structured-output field,
        `"structured_outputs": {"regex": ...}` (current vLLM; the older top-level `guided_regex` was
        removed in v0.12, so older servers need an upgrade), and the answer is returned unstripped, as the
        transformers backend does: the server guarantees a full match. Servers without that extension
        (hosted APIs) reject or ignore the field."""
        payloads: list[dict[str, Any]] = []
        for request in requests:
            payload: dict[str, Any] = {
                "model": self.served_model,
                "messages": chat_messages(request, None, _image_url_content),
                "temperature": decoding.temperature,
                "top_p": decoding.top_p,
                "max_tokens": decoding.max_new_tokens,
                "seed": decoding.seed,
            }
            if decoding.regex is not None:
                payload["structured_outputs"] = {"regex": decoding.regex}
            payloads.append(payload)
        texts = [_first_choice(body)["message"].get("content") or "" for body in self._post_all(payloads)]
        return texts if decoding.regex is not None else [text.strip() for text in texts]

    def next_token_probs(
        self, requests: Sequence[ChatRequest], assistant_prefixes: Sequence[str], tokens: Sequence[str]
    ) -> list[dict[str, float]]:
        """exp(logprob) of each token among the server's top_logprobs for the one next token; 0.0 for a
        token not among them. A non-empty prefix is continued in place through vLLM's
        `continue_final_message` extension (hosted APIs without it reject such requests)."""
        if len(requests) != len(assistant_prefixes):
            raise ValueError("one assistant prefix is needed per request")
        payloads = []
        for request, prefix in zip(requests, assistant_prefixes, strict=True):
            payload: dict[str, Any] = {
                "model": self.served_model,
                "messages": chat_messages(request, prefix, _image_url_content),
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": self.top_logprobs,
            }
            if prefix:
                payload |= {"add_generation_prompt": False, "continue_final_message": True}
            payloads.append(payload)
        return [_token_probs(body, tokens) for body in self._post_all(payloads)]

    def close(self) -> None:
        """Release the worker threads and connections (a retry waiting to happen gives up)."""
        self._closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post_all(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Response bodies in request order; on the first failure the requests not yet sent are dropped."""
        futures: list[Future[dict[str, Any]]] = [
            self._pool.submit(self._post, payload) for payload in payloads
        ]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One request, retried on transient failures only: a 4xx other than the retryable ones means
        the request itself is wrong, and repeating it would only hide that."""
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._client.post(self.url, json=payload)
            except RETRYABLE_ERRORS as error:
                if last:
                    raise ChatAPIError(None, f"{type(error).__name__}: {error}") from error
                delay = self._backoff(attempt)
            else:
                if response.is_success:
                    return response.json()
                if response.status_code not in RETRYABLE_STATUS or last:
                    raise ChatAPIError(response.status_code, _error_message(response))
                retry_after = _retry_after_s(response)
                delay = self._backoff(attempt) if retry_after is None else retry_after
            if self._closed.wait(min(delay, self.max_backoff_s)):
                raise ChatAPIError(None, "backend closed while waiting to retry")
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter (half to all of the step), so parallel retries spread out."""
        step = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return step * random.uniform(0.5, 1.0)


def _first_choice(body: dict[str, Any]) -> dict[str, Any]:
    choices = body.get("choices") or []
    if not choices:
        raise ChatAPIError(200, f"response without choices: {str(body)[:500]}")
    return choices[0]


def _token_probs(body: dict[str, Any], tokens: Sequence[str]) -> dict[str, float]:
    """Probabilities of `tokens` read from the first generated token's top_logprobs."""
    content = (_first_choice(body).get("logprobs") or {}).get("content") or []
    if not content:
        raise ChatAPIError(200, "response without logprobs; does the server support `logprobs`?")
    found: dict[str, float] = {}
    for entry in content[0].get("top_logprobs") or []:
        found.setdefault(entry["token"], float(entry["logprob"]))
    return {token: math.exp(found[token]) if token in found else 0.0 for token in tokens}
