"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, answering from a ChatBackend (or any
handler): the OpenAI-compatible client is tested over real HTTP, never against a mocked client."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from resources.chat import ChatRequest, Decoding, ImagePart
from resources.transformers_backend import TransformersBackend

Reply = tuple[int, dict[str, str], dict[str, Any]] | None  # None: drop the connection without answering
Handler = Callable[[dict[str, Any]], Reply]


def model_entry(model_id: str, root: str | None = None, created: int = 1700000000) -> dict[str, Any]:
    """One `/v1/models` entry as vLLM writes it (`root`: the weights it loaded; `owned_by: vllm`), or,
    without a root, as a hosted API does."""
    if root is None:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "system"}
    return {"id": model_id, "object": "model", "created": created, "owned_by": "vllm", "root": root}


class LoopbackServer:
    """A threaded HTTP server on a free 127.0.0.1 port whose /v1/chat/completions answers through
    `handler` and whose /v1/models lists `models`; it counts chat calls, records when they came, their
    headers and how many were in flight at once."""

    def __init__(self, handler: Handler, models: Sequence[dict[str, Any]] = ()) -> None:
        self.handler = handler
        self.models = list(models)
        self.model_listings = 0
        self.calls = 0
        self.call_times: list[float] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        owner = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    self._send(404, {}, {"error": {"message": f"no route {self.path}"}})
                    return
                owner.model_listings += 1
                self._send(200, {}, {"object": "list", "data": owner.models})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/chat/completions":
                    self._send(404, {}, {"error": {"message": f"no route {self.path}"}})
                    return
                headers = {key.lower(): value for key, value in self.headers.items()}
                reply = owner._handle(json.loads(body), headers)
                if reply is None:
                    self.close_connection = True
                    return
                self._send(*reply)

            def _send(self, status: int, headers: dict[str, str], payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    # the client stopped waiting (a timeout under test): there is no one to answer
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _handle(self, payload: dict[str, Any], headers: dict[str, str]) -> Reply:
        with self._lock:
            self.calls += 1
            self.call_times.append(time.monotonic())
            self.headers.append(headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self.handler(payload)
        finally:
            with self._lock:
                self.in_flight -= 1

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def completion(content: str, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": "stop",
        "logprobs": logprobs,
    }
    return {"id": "chatcmpl-test", "object": "chat.completion", "model": "tiny", "choices": [choice]}


class ModelHandler:
    """Serves chat completions from a TransformersBackend, the way `vllm serve` would: rebuilds each
    request from the OpenAI messages (decoding data-URL images to files), generates (honouring vLLM's
    `structured_outputs.regex`), or reports the top_logprobs over the whole vocabulary for the one next
    token after a continued prefix."""

    def __init__(self, backend: TransformersBackend, image_dir: Path) -> None:
        self.backend = backend
        self.image_dir = image_dir
        self.lock = threading.Lock()  # one model, one request at a time
        self.images_seen = 0
        self.mimes: list[str] = []
        self.payloads: list[dict[str, Any]] = []
        tokenizer = backend.tokenizer
        texts = {token_id: tokenizer.decode([token_id]) for token_id in range(len(tokenizer))}
        # Every token that is its own text's single-token encoding: the whole vocabulary, as strings.
        self.vocab = sorted(
            text
            for token_id, text in texts.items()
            if tokenizer.encode(text, add_special_tokens=False) == [token_id]
        )

    def __call__(self, payload: dict[str, Any]) -> Reply:
        with self.lock:
            self.payloads.append(payload)
            try:
                request, prefix = self._request(payload)
            except ValueError as error:
                return 400, {}, {"error": {"message": str(error), "type": "BadRequestError"}}
            generating = not payload.get("logprobs") or payload["max_tokens"] > 1
            if generating:
                decoding = Decoding(
                    max_new_tokens=payload["max_tokens"],
                    temperature=payload["temperature"],
                    top_p=payload["top_p"],
                    seed=payload["seed"],
                    regex=(payload.get("structured_outputs") or {}).get("regex"),
                )
                if payload.get("logprobs"):
                    return 200, {}, self._probed(request, decoding, payload["top_logprobs"])
                return 200, {}, completion(self.backend.generate([request], decoding)[0])
            probs = self.backend.next_token_probs([request], [prefix], self.vocab)[0]
            top = sorted(probs.items(), key=lambda item: -item[1])[: payload["top_logprobs"]]
            entries = [{"token": token, "logprob": math.log(p), "bytes": None} for token, p in top]
            content = [{**entries[0], "top_logprobs": entries}]
            return 200, {}, completion(top[0][0], {"content": content})

    def _probed(self, request: ChatRequest, decoding: Decoding, top_logprobs: int) -> dict[str, Any]:
        """A generation with per-token logprobs, built from the backend's probed answer: each score
        digit it wrote is its own entry (its logprob, and the digits' as its top_logprobs, best first,
        cut to `top_logprobs`); the text between digits travels as one entry each, without
        alternatives (a real server splits it finer; the client only joins the texts)."""
        (answer,) = self.backend.generate_probed([request], decoding, list("12345"))
        content, start = [], 0
        for position in answer.positions:
            if position.offset > start:
                text = answer.text[start : position.offset]
                content.append({"token": text, "logprob": 0.0, "bytes": None, "top_logprobs": []})
            digit = answer.text[position.offset]
            ranked = sorted(position.probs.items(), key=lambda item: -item[1])[:top_logprobs]
            alternatives = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in ranked if p > 0]
            content.append(
                {
                    "token": digit,
                    "logprob": math.log(position.probs[digit]),
                    "bytes": None,
                    "top_logprobs": alternatives,
                }
            )
            start = position.offset + 1
        if start < len(answer.text):
            content.append({"token": answer.text[start:], "logprob": 0.0, "bytes": None, "top_logprobs": []})
        return completion(answer.text, {"content": content})

    def _request(self, payload: dict[str, Any]) -> tuple[ChatRequest, str]:
        messages = list(payload["messages"])
        prefix = ""
        if messages[-1]["role"] == "assistant":
            if not payload.get("continue_final_message") or payload.get("add_generation_prompt", True):
                raise ValueError(
                    "a final assistant message needs continue_final_message, no generation prompt"
                )
            prefix = messages.pop()["content"]
        system = messages.pop(0)["content"] if messages[0]["role"] == "system" else None
        (user,) = messages
        content = user["content"]
        if isinstance(content, str):
            return ChatRequest(user=(content,), system=system), prefix
        parts: list[str | ImagePart] = []
        for part in content:
            if part["type"] == "text":
                parts.append(part["text"])
            elif part["type"] == "image_url":
                parts.append(self._image(part["image_url"]["url"]))
            else:
                raise ValueError(f"unknown content part {part['type']!r}")
        return ChatRequest(user=tuple(parts), system=system), prefix

    def _image(self, url: str) -> ImagePart:
        header, data = url.split(",", 1)
        if not (header.startswith("data:") and header.endswith(";base64")):
            raise ValueError(f"not a base64 data URL: {header}")
        self.mimes.append(header.removeprefix("data:").removesuffix(";base64"))
        raw = base64.b64decode(data)
        sha256 = hashlib.sha256(raw).hexdigest()
        path = self.image_dir / f"{sha256}.img"
        path.write_bytes(raw)
        self.images_seen += 1
        return ImagePart(path=path, sha256=sha256)


def request_text(payload: dict[str, Any]) -> str:
    """All the text of a chat-completions request's messages, images left out."""
    texts = []
    for message in payload["messages"]:
        content = message["content"]
        parts = [content] if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]
        texts += parts
    return "\n".join(texts)


class FailingHandler:
    """Answers a request whose text contains a marker with that marker's HTTP status and an OpenAI-style
    error body (400: the request is refused; 503: the server is overloaded), and hands every other
    request to `inner`. `failures` may be changed between runs, e.g. to let an overloaded server heal."""

    def __init__(self, inner: Handler, failures: dict[str, int]) -> None:
        self.inner = inner
        self.failures = failures
        self.refused: list[str] = []

    def __call__(self, payload: dict[str, Any]) -> Reply:
        text = request_text(payload)
        for marker, status in self.failures.items():
            if marker in text:
                self.refused.append(marker)
                return status, {}, {"error": {"message": f"refused {marker} with {status}", "type": "Test"}}
        return self.inner(payload)


class SlowOne:
    """Answers each request with its own text: one whose text contains `marker` after `slow_s`,
    everything else after 20 ms. Records when each answer left and counts the requests that arrived
    while the slow one was running."""

    def __init__(self, slow_s: float, marker: str = "slow") -> None:
        self.slow_s = slow_s
        self.marker = marker
        self.finished: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.started_during_slow = 0
        self.slow_running = threading.Event()

    def __call__(self, payload: dict[str, Any]) -> Reply:
        text = request_text(payload)
        self.started[text] = time.monotonic()
        if self.marker in text:
            self.slow_running.set()
            time.sleep(self.slow_s)
            self.slow_running.clear()
        else:
            self.started_during_slow += self.slow_running.is_set()
            time.sleep(0.02)
        self.finished[text] = time.monotonic()
        return 200, {}, completion(text)


class AppServer:
    """An ASGI app served by uvicorn on a free 127.0.0.1 port in a background thread, lifespan
    included, so tests talk to it over real HTTP; `close` shuts it down the way Ctrl-C would."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)


def wait_ready(base_url: str, expect: int = 200, timeout_s: float = 60) -> dict[str, Any]:
    """Poll a reward server's /healthz until it is past loading its critic (the app answers at once, the
    critic loads in the background) and return the final health body; that answer's status must be
    `expect` (200: loaded; 503: the load failed)."""
    deadline = time.monotonic() + timeout_s
    while (health := httpx.get(f"{base_url}/healthz")).json()["status"] == "loading":
        assert time.monotonic() < deadline, f"{base_url} still loading its critic after {timeout_s} s"
        time.sleep(0.05)
    assert health.status_code == expect, health.text
    return health.json()
