"""ChatBackend over any OpenAI-compatible chat-completions server (`vllm serve`, hosted APIs), so a
shared inference server can do the work instead of weights loaded in this process.

The official `openai` SDK does the HTTP: its timeouts, and its retries of what may pass (408, 409, 429,
5xx, a dropped connection, a timeout), waiting as a `Retry-After` header asks (up to two minutes) or
backing off exponentially otherwise. Everything else (a 400, 401, 404, 422) fails at once. One pool of
`concurrency` worker threads serves every call to a backend: each slot takes the next request as soon
as its own is answered, so one slow request holds one slot, never the others, and two callers sharing
the backend share the bound."""

from __future__ import annotations

import base64
import math
import mimetypes
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import openai
from openai.types.chat import ChatCompletion

from resources.chat import (
    CallFailure,
    ChatRequest,
    Decoding,
    ImagePart,
    ModelRef,
    ProbedAnswer,
    TokenProbs,
    TokenUsage,
    classify_failure,
)
from resources.messages import chat_messages

# Which kind of server answers: only a vLLM server gets vLLM's extensions to the request
# (`structured_outputs`, `continue_final_message`); a hosted API would refuse them.
SERVERS = ("vllm", "openai")
# The 4xx worth another try (the SDK retries them, and every 5xx): a timeout, a conflict, a rate limit.
RETRYABLE_4XX = frozenset({408, 409, 429})

Item = TypeVar("Item")

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
        return status is None or status in RETRYABLE_4XX or not 400 <= status < 500


def api_error(error: openai.APIError) -> ChatAPIError:
    """The SDK's exception as a ChatAPIError: the status and the server's own explanation (OpenAI's
    `{"error": {"message"}}`, vLLM's `{"message"}`), or, with no response, what went wrong underneath
    (ConnectError, ReadTimeout)."""
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__
        return ChatAPIError(
            None, f"{type(cause).__name__}: {cause or error.message}" if cause else error.message
        )
    body = error.body
    message = body.get("message") if isinstance(body, dict) else body
    return ChatAPIError(getattr(error, "status_code", None), str(message or error.message))


def served_revision(entry: Mapping[str, Any]) -> str:
    """The revision of the weights behind a served model name, from its `/v1/models` entry: vLLM's
    `root` (the path or hub id it loaded), else a hosted API's `created` time (a new snapshot under an
    old name is created anew). vLLM's `created` is the time of the listing, so it is only the fallback.
    Two servers loading the same hub id at different hub revisions share a root: set `revision`."""
    if entry.get("root"):
        return f"root:{entry['root']}"
    if isinstance(entry.get("created"), int):
        return f"created:{entry['created']}"
    raise ValueError(
        f"the server's entry for {entry.get('id')!r} names neither `root` nor `created`; "
        "set `revision` in the role's config"
    )


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
    """The image inline as a base64 `data:` URL (a file's own bytes, an in-memory image as PNG): the
    server need not share this machine's disk."""
    data, name = part.encoded()
    return f"data:{image_mime(data, name)};base64,{base64.b64encode(data).decode('ascii')}"


def _image_url_content(part: ImagePart) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": image_data_url(part)}}


class OpenAIBackend:
    """Batched chat and next-token probabilities through `POST {base_url}/chat/completions`.

    The model's revision is `revision` when given, else read once from the server's `/v1/models`
    (`served_revision`), so answers from different weights served under one name never share a cache
    entry. The API key is read from the environment variable `api_key_env` ("EMPTY" when unset, which a
    vLLM server without `--api-key` accepts)."""

    concurrent_calls = True  # callers share the pool, so a second batch fills the slots the first left
    on_gpu = False  # the server's GPU time is the server's to account for

    def __init__(
        self,
        base_url: str,
        model: str,
        revision: str | None = None,
        server: str = "vllm",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 4,
        timeout_s: float = 120.0,
        top_logprobs: int = 20,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if server not in SERVERS:
            raise ValueError(f"server must be one of {SERVERS}, not {server!r}")
        if chat_template_kwargs and server != "vllm":
            raise ValueError(
                f"chat template variables {dict(chat_template_kwargs)} need a vLLM server "
                f"(`chat_template_kwargs` is a vLLM request extension); this backend's server is {server!r}"
            )
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.served_model = model
        self.server = server
        self.top_logprobs = top_logprobs
        # Extra variables for the server's chat template (Qwen3's `enable_thinking`), sent with every request.
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.usage = TokenUsage()
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "EMPTY",
            timeout=timeout_s,
            max_retries=max_retries,
        )
        try:
            self.model = ModelRef(model, revision or self._served_revision(), backend="openai")
        except BaseException:
            self._client.close()
            raise
        # One pool for the backend, not one per call, so the bound holds across concurrent callers too.
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-backend")

    def generate(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str]:
        """The assistant's answer for each request, stripped like the transformers backend's.

        With decoding.regex a vLLM server gets vLLM's structured-output field in the request body,
        `"structured_outputs": {"regex": ...}` (the older top-level `guided_regex` was removed in vLLM
        0.12), and the answer is returned unstripped, as the transformers backend does: the server
        guarantees a full match. Other servers have no such field: they answer unguided, the answer is
        stripped, and the stage's parser alone decides whether it has the format."""
        answers = self.generate_each(requests, decoding)
        for answer in answers:
            if isinstance(answer, CallFailure):
                raise answer.error
        return [answer for answer in answers if isinstance(answer, str)]

    def generate_each(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str | CallFailure]:
        """`generate`'s answer for each request, or that request's own classified failure: every
        request is sent once (and retried by the SDK only when the failure may pass), so a refused
        request never costs its neighbours a second request."""
        results = self._run_each(self._completion_call(decoding), requests)
        return [
            result if isinstance(result, CallFailure) else self._text(result, decoding) for result in results
        ]

    def _text(self, answer: ChatCompletion, decoding: Decoding) -> str | CallFailure:
        try:
            text = _first_choice(answer).message.content or ""
        except ChatAPIError as error:
            return classify_failure(error)
        return text if self._guided(decoding) else text.strip()

    def generate_probed(
        self, requests: Sequence[ChatRequest], decoding: Decoding, tokens: Sequence[str]
    ) -> list[ProbedAnswer]:
        """`generate`'s answers, unstripped, with the probabilities of `tokens` read from the same
        completions' standard `logprobs`/`top_logprobs` fields: a token outside the server's top list
        counts 0 (the generated token itself is always listed). Offsets come from the listed token
        texts; when those do not spell the answer exactly, no positions are returned."""
        answers = self._generate_all(requests, decoding, logprobs=True, top_logprobs=self.top_logprobs)
        return [_probed(answer, tokens) for answer in answers]

    def _extra_body(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        """vLLM's request extensions for one request, with the role's chat template variables; None
        when there are none, so a plain OpenAI request stays plain."""
        if self.chat_template_kwargs:
            fields = {**fields, "chat_template_kwargs": self.chat_template_kwargs}
        return fields or None

    def _guided(self, decoding: Decoding) -> bool:
        return decoding.regex is not None and self.server == "vllm"

    def _generate_all(
        self, requests: Sequence[ChatRequest], decoding: Decoding, **extra: Any
    ) -> list[ChatCompletion]:
        """One completion per request under `decoding`; the first failure raises."""
        return self._run_all(self._completion_call(decoding, **extra), requests)

    def _completion_call(self, decoding: Decoding, **extra: Any) -> Callable[[ChatRequest], ChatCompletion]:
        """The call that asks for one request's completion under `decoding` (its regex sent to vLLM
        servers only)."""
        extra_body = {"structured_outputs": {"regex": decoding.regex}} if self._guided(decoding) else {}

        def call(request: ChatRequest) -> ChatCompletion:
            return self._create(
                messages=chat_messages(request, None, _image_url_content),
                temperature=decoding.temperature,
                top_p=decoding.top_p,
                max_tokens=decoding.max_new_tokens,
                seed=decoding.seed,
                extra_body=self._extra_body(extra_body),
                **extra,
            )

        return call

    def next_token_probs(
        self, requests: Sequence[ChatRequest], assistant_prefixes: Sequence[str], tokens: Sequence[str]
    ) -> list[dict[str, float]]:
        """exp(logprob) of each token among the server's top_logprobs for the one next token; 0.0 for a
        token not among them. A non-empty prefix is continued in place through vLLM's
        `continue_final_message` extension, so it needs a vLLM server."""
        if len(requests) != len(assistant_prefixes):
            raise ValueError("one assistant prefix is needed per request")
        if self.server != "vllm" and any(assistant_prefixes):
            raise ValueError(
                "continuing an assistant prefix needs a vLLM server (continue_final_message); "
                f"this backend's server is {self.server!r}"
            )

        def call(item: tuple[ChatRequest, str]) -> ChatCompletion:
            request, prefix = item
            return self._create(
                messages=chat_messages(request, prefix, _image_url_content),
                max_tokens=1,
                temperature=0.0,
                logprobs=True,
                top_logprobs=self.top_logprobs,
                extra_body=self._extra_body(
                    {"add_generation_prompt": False, "continue_final_message": True} if prefix else {}
                ),
            )

        answers = self._run_all(call, list(zip(requests, assistant_prefixes, strict=True)))
        return [_token_probs(answer, tokens) for answer in answers]

    def close(self) -> None:
        """Release the worker threads (after the requests in flight) and the connections."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _served_revision(self) -> str:
        """The revision the server reports for this model name (see `served_revision`)."""
        url = f"{self._client.base_url}models"
        try:
            entries = [entry.to_dict() for entry in self._client.models.list().data]
        except openai.APIError as error:
            raise RuntimeError(
                f"cannot read the served models at {url} to record the model revision "
                f"({api_error(error).message}); set `revision` in the role's config to skip this"
            ) from error
        for entry in entries:
            if entry.get("id") == self.served_model:
                return served_revision(entry)
        served = sorted(str(entry.get("id")) for entry in entries)
        raise ValueError(f"{url} does not serve {self.served_model!r}; it serves {served}")

    def _run_all(self, call: Callable[[Item], ChatCompletion], items: Sequence[Item]) -> list[ChatCompletion]:
        """Answers in request order. The whole batch is queued on the shared pool at once (each request
        is built, images encoded, only when a slot takes it); on the first failure, in order, the
        requests not yet started are dropped and that failure is raised."""
        futures: list[Future[ChatCompletion]] = [self._pool.submit(call, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def _run_each(
        self, call: Callable[[Item], ChatCompletion], items: Sequence[Item]
    ) -> list[ChatCompletion | CallFailure]:
        """Answers in request order, each request on its own: a failed one (a refusal, an image that
        cannot be encoded) is its classified failure and the others still run."""
        futures = [self._pool.submit(call, item) for item in items]
        results: list[ChatCompletion | CallFailure] = []
        for future in futures:
            try:
                results.append(future.result())
            except Exception as error:  # one request's failure is that request's
                results.append(classify_failure(error))
        return results

    def _create(self, **params: Any) -> ChatCompletion:
        """One chat completion, retried by the SDK; its exceptions become ChatAPIErrors."""
        try:
            answer = self._client.chat.completions.create(model=self.served_model, **params)
        except openai.APIError as error:
            raise api_error(error) from error
        if answer.usage is not None:  # the API's own counts; a server that reports none adds nothing
            self.usage.add(answer.usage.prompt_tokens, answer.usage.completion_tokens)
        return answer


def _first_choice(answer: ChatCompletion) -> Any:
    choices = getattr(answer, "choices", None) or []
    if not choices:
        raise ChatAPIError(200, f"response without choices: {str(answer)[:500]}")
    return choices[0]


def _probed(answer: ChatCompletion, tokens: Sequence[str]) -> ProbedAnswer:
    """The answer text with `tokens`' probabilities at each generated position that wrote one of them."""
    choice = _first_choice(answer)
    text = choice.message.content or ""
    content = (choice.logprobs.content if choice.logprobs is not None else None) or []
    if "".join(entry.token for entry in content) != text:
        return ProbedAnswer(text, ())
    positions, offset = [], 0
    for entry in content:
        if entry.token in tokens:
            listed = {top.token: float(top.logprob) for top in entry.top_logprobs or []}
            listed[entry.token] = float(entry.logprob)
            probs = {token: math.exp(listed[token]) if token in listed else 0.0 for token in tokens}
            positions.append(TokenProbs(offset, probs))
        offset += len(entry.token)
    return ProbedAnswer(text, tuple(positions))


def _token_probs(answer: ChatCompletion, tokens: Sequence[str]) -> dict[str, float]:
    """Probabilities of `tokens` read from the first generated token's top_logprobs."""
    logprobs = _first_choice(answer).logprobs
    content = (logprobs.content if logprobs is not None else None) or []
    if not content:
        raise ChatAPIError(200, "response without logprobs; does the server support `logprobs`?")
    found: dict[str, float] = {}
    for entry in content[0].top_logprobs or []:
        found.setdefault(entry.token, float(entry.logprob))
    return {token: math.exp(found[token]) if token in found else 0.0 for token in tokens}
