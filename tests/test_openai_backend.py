"""OpenAIBackend against a real HTTP server on 127.0.0.1: answers match the transformers backend that
serves them, images travel, transient failures are retried (bounded, honouring Retry-After), permanent
ones are not, and no more requests are in flight than allowed. Also: vLLM stays an optional import, and
VllmBackend drives a stand-in engine correctly (the real one needs a GPU)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from loopback import Handler, LoopbackServer, ModelHandler, Reply, completion

from resources.chat import ChatRequest, Decoding, ImagePart, ModelRef
from resources.openai_backend import ChatAPIError, OpenAIBackend, _retry_after_s, image_mime
from resources.tiny_models import TEXT_NAME, VL_NAME
from resources.transformers_backend import TransformersBackend

DIGITS = list("12345")
GREEDY = Decoding(max_new_tokens=12)
JUDGE = r'\{"reasoning": "[a-z ]{0,20}", "score": [1-5]\}'
FAST = {"backoff_s": 0.01, "max_backoff_s": 5.0}


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], LoopbackServer]]:
    """Start loopback servers for a test; all are shut down after it."""
    servers: list[LoopbackServer] = []

    def start(handler: Handler) -> LoopbackServer:
        servers.append(LoopbackServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def vl(tiny_models: dict[str, Path]) -> TransformersBackend:
    return TransformersBackend(str(tiny_models[VL_NAME]))


@pytest.fixture(scope="module")
def requests(images: list[ImagePart]) -> list[ChatRequest]:
    """Four images over four requests, one of them text only."""
    return [
        ChatRequest(user=(images[0], "Rate the edit from 1 to 5."), system="You are a judge."),
        ChatRequest(user=("Before:", images[1], "After:", images[2], "Compare.")),
        ChatRequest(user=("Describe ", "a red car.")),
        ChatRequest(user=(images[2], "What is this?")),
    ]


@pytest.fixture(scope="module")
def model_server(
    vl: TransformersBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LoopbackServer, ModelHandler]]:
    handler = ModelHandler(vl, tmp_path_factory.mktemp("received"))
    server = LoopbackServer(handler)
    yield server, handler
    server.close()


Client = Callable[..., OpenAIBackend]


@pytest.fixture
def client() -> Iterator[Client]:
    """Build OpenAIBackends for a test; all are closed after it (threads, sockets)."""
    made: list[OpenAIBackend] = []

    def make(*args: Any, **kwargs: Any) -> OpenAIBackend:
        made.append(OpenAIBackend(*args, **kwargs))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


def test_model_ref_and_auth_header(
    client: Client, serve: Callable[[Handler], LoopbackServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(lambda payload: (200, {}, completion("ok")))
    backend = client(server.base_url + "/", "served-name", api_key="secret")
    assert backend.model == ModelRef("served-name", "api")
    assert backend.model.backend == "openai"
    assert client(server.base_url, "m", revision="v2").model.revision == "v2"
    assert backend.generate([ChatRequest(user=("hi",))], GREEDY) == ["ok"]
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert client(server.base_url, "m").generate([ChatRequest(user=("hi",))], GREEDY) == ["ok"]
    monkeypatch.delenv("OPENAI_API_KEY")
    assert client(server.base_url, "m").generate([ChatRequest(user=("hi",))], GREEDY) == ["ok"]
    assert [headers["Authorization"] for headers in server.headers] == [
        "Bearer secret",
        "Bearer from-env",
        "Bearer EMPTY",
    ]


def test_generate_matches_the_serving_model(
    client: Client,
    model_server: tuple[LoopbackServer, ModelHandler],
    vl: TransformersBackend,
    requests: list[ChatRequest],
) -> None:
    server, handler = model_server
    backend = client(server.base_url, "tiny", max_concurrency=4)
    seen_before = handler.images_seen
    answers = backend.generate(requests, GREEDY)
    assert answers == [vl.generate([request], GREEDY)[0] for request in requests]
    assert handler.images_seen - seen_before == sum(len(request.images) for request in requests) == 4
    assert set(handler.mimes) == {"image/png"}
    sampled = Decoding(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert backend.generate(requests[:2], sampled) == [vl.generate([r], sampled)[0] for r in requests[:2]]
    last = handler.payloads[-1]
    assert (last["temperature"], last["top_p"], last["seed"], last["max_tokens"]) == (1.0, 0.9, 3, 8)
    assert "structured_outputs" not in last


def test_regex_travels_as_structured_outputs(
    client: Client,
    model_server: tuple[LoopbackServer, ModelHandler],
    vl: TransformersBackend,
    requests: list[ChatRequest],
) -> None:
    """vLLM's current field carries the regex; answers equal the serving model's guided ones."""
    server, handler = model_server
    backend = client(server.base_url, "tiny", max_concurrency=4)
    guided = Decoding(max_new_tokens=64, regex=JUDGE)
    answers = backend.generate(requests, guided)
    assert answers == [vl.generate([request], guided)[0] for request in requests]
    assert all(re.fullmatch(JUDGE, answer) for answer in answers)
    assert handler.payloads[-1]["structured_outputs"] == {"regex": JUDGE}


def test_next_token_probs_match_the_serving_model(
    client: Client,
    model_server: tuple[LoopbackServer, ModelHandler],
    vl: TransformersBackend,
    requests: list[ChatRequest],
) -> None:
    """With top_logprobs covering the vocabulary every token is reported; the empty prefix is a plain
    generation prompt and only non-empty prefixes ask the server to continue the assistant message."""
    server, handler = model_server
    backend = client(server.base_url, "tiny", top_logprobs=len(handler.vocab))
    prefixes = ["Score: ", "", "The answer is", "Score:"]
    count = len(handler.payloads)
    probs = backend.next_token_probs(requests, prefixes, DIGITS)
    expected = vl.next_token_probs(requests, prefixes, DIGITS)
    for row, reference in zip(probs, expected, strict=True):
        assert list(row) == DIGITS
        assert row == pytest.approx(reference, abs=1e-4, rel=1e-4)
        assert all(value > 0 for value in row.values())
    sent = handler.payloads[count:]
    continued = [payload.get("continue_final_message", False) for payload in sent]
    assert sorted(continued) == [False, True, True, True]
    assert all(payload["max_tokens"] == 1 and payload["logprobs"] is True for payload in sent)


def test_tokens_outside_the_top_logprobs_are_zero(
    client: Client,
    model_server: tuple[LoopbackServer, ModelHandler],
    vl: TransformersBackend,
    requests: list[ChatRequest],
) -> None:
    server, handler = model_server
    request, prefix = requests[0], "Score: "
    (everything,) = vl.next_token_probs([request], [prefix], handler.vocab)
    ranked = sorted(everything, key=lambda token: -everything[token])
    tokens = [*ranked[:2], *DIGITS, ranked[-1]]
    backend = client(server.base_url, "tiny")
    assert backend.top_logprobs == 20
    (row,) = backend.next_token_probs([request], [prefix], tokens)
    assert handler.payloads[-1]["top_logprobs"] == 20
    top20 = set(ranked[:20])
    for token in tokens:
        assert row[token] == pytest.approx(everything[token] if token in top20 else 0.0, abs=1e-4)
    assert row[ranked[0]] > 0 and row[ranked[-1]] == 0.0


def test_retries_transient_failures_then_succeeds(
    client: Client, serve: Callable[[Handler], LoopbackServer]
) -> None:
    script: list[Reply] = [(503, {}, {"error": {"message": "warming up"}}), None, (502, {}, {})]

    def handler(payload: dict[str, Any]) -> Reply:
        return script.pop(0) if script else (200, {}, completion("fine"))

    server = serve(handler)
    backend = client(server.base_url, "m", max_retries=4, **FAST)
    assert backend.generate([ChatRequest(user=("hi",))], GREEDY) == ["fine"]
    assert server.calls == 4  # 503, dropped connection, 502, success


def test_retry_after_is_honoured(client: Client, serve: Callable[[Handler], LoopbackServer]) -> None:
    script: list[Reply] = [(429, {"Retry-After": "1"}, {"error": {"message": "slow down"}})]
    server = serve(lambda payload: script.pop(0) if script else (200, {}, completion("ok")))
    backend = client(server.base_url, "m", **FAST)
    assert backend.generate([ChatRequest(user=("hi",))], GREEDY) == ["ok"]
    assert server.calls == 2
    assert server.call_times[1] - server.call_times[0] >= 0.95


def test_retry_after_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    wait = _retry_after_s(httpx.Response(503, headers={"Retry-After": later}))
    assert wait is not None and 25 < wait <= 30
    assert _retry_after_s(httpx.Response(503, headers={"Retry-After": "2.5"})) == 2.5
    assert _retry_after_s(httpx.Response(503)) is None
    assert _retry_after_s(httpx.Response(503, headers={"Retry-After": "soon"})) is None


def test_client_errors_are_not_retried(client: Client, serve: Callable[[Handler], LoopbackServer]) -> None:
    server = serve(lambda payload: (400, {}, {"error": {"message": "image could not be decoded"}}))
    backend = client(server.base_url, "m", **FAST)
    with pytest.raises(ChatAPIError, match="image could not be decoded") as caught:
        backend.generate([ChatRequest(user=("hi",))], GREEDY)
    assert caught.value.status_code == 400
    assert server.calls == 1


def test_retries_are_bounded(client: Client, serve: Callable[[Handler], LoopbackServer]) -> None:
    server = serve(lambda payload: (503, {}, {"object": "error", "message": "overloaded"}))
    backend = client(server.base_url, "m", max_retries=3, **FAST)
    with pytest.raises(ChatAPIError, match="overloaded") as caught:
        backend.generate([ChatRequest(user=("hi",))], GREEDY)
    assert caught.value.status_code == 503
    assert server.calls == 4


def test_unreachable_server_raises_after_retries(client: Client) -> None:
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens there now
    backend = client(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, **FAST)
    with pytest.raises(ChatAPIError, match="ConnectError") as caught:
        backend.generate([ChatRequest(user=("hi",))], GREEDY)
    assert caught.value.status_code is None


def test_concurrency_is_bounded_and_order_kept(
    client: Client, serve: Callable[[Handler], LoopbackServer]
) -> None:
    def handler(payload: dict[str, Any]) -> Reply:
        time.sleep(0.03)
        return 200, {}, completion(payload["messages"][-1]["content"].upper())

    server = serve(handler)
    backend = client(server.base_url, "m", max_concurrency=3)
    requests = [ChatRequest(user=(f"request {index}",)) for index in range(18)]
    assert backend.generate(requests, GREEDY) == [f"REQUEST {index}" for index in range(18)]
    assert server.max_in_flight == 3


def test_image_mime_sniffs_bytes_then_extension(images: list[ImagePart]) -> None:
    assert image_mime(images[0].path.read_bytes(), "x.bin") == "image/png"
    assert image_mime(b"\xff\xd8\xff\xe0rest", "x.png") == "image/jpeg"
    assert image_mime(b"RIFF\0\0\0\0WEBPVP8 ", "x") == "image/webp"
    assert image_mime(b"????", "photo.jpg") == "image/jpeg"


def test_vllm_backend_is_an_optional_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the backends never imports vLLM; building VllmBackend without it names the extra."""
    code = (
        "import sys, resources.vllm_backend, resources.openai_backend, resources.messages; "
        "assert 'vllm' not in sys.modules, 'vllm imported at module import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    from resources.vllm_backend import VllmBackend

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, even where it is
    with pytest.raises(ImportError, match=r"`gpu` extra"):
        VllmBackend("tiny:tiny-qwen3-vl")


class FakeVllm:
    """Stands in for the `vllm` module to check what VllmBackend hands the engine and how it reads the
    answers; it says nothing about vLLM itself (that needs a GPU)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.init_kwargs: dict[str, Any] = {}
        self.chats: list[dict[str, Any]] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

        class StructuredOutputsParams:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs: Any) -> None:
                fake.init_kwargs = kwargs

            def get_tokenizer(self) -> Any:
                return fake.tokenizer

            def chat(self, messages: list[list[dict[str, Any]]], **kwargs: Any) -> list[Any]:
                fake.chats.append({"messages": messages, **kwargs})
                outputs = []
                for conversation in messages:
                    last = conversation[-1]["content"]
                    text = (
                        last
                        if isinstance(last, str)
                        else "|".join(p["text"] for p in last if p["type"] == "text")
                    )
                    # logprob of the token "1" encodes which conversation this was; "2" is never reported
                    logprobs = [{fake.tokenizer.encode("1")[0]: SimpleNamespace(logprob=-len(text))}]
                    completion = SimpleNamespace(text=f" {text.upper()} ", logprobs=logprobs)
                    outputs.append(SimpleNamespace(outputs=[completion]))
                return outputs

        self.module = SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)
        self.sampling_params = SimpleNamespace(StructuredOutputsParams=StructuredOutputsParams)


def test_vllm_backend_drives_the_engine(
    tiny_models: dict[str, Path],
    vl: TransformersBackend,
    requests: list[ChatRequest],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resources.vllm_backend import VllmBackend

    fake = FakeVllm(vl.tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", fake.sampling_params)
    backend = VllmBackend(str(tiny_models[VL_NAME]), dtype="float16", max_model_len=4096)
    assert fake.init_kwargs["limit_mm_per_prompt"] == {"image": 4}
    assert (fake.init_kwargs["dtype"], fake.init_kwargs["max_model_len"]) == ("float16", 4096)
    assert backend.model.backend == "vllm" and backend.model.revision == vl.model.revision

    answers = backend.generate(requests, Decoding(max_new_tokens=5, temperature=0.5, top_p=0.9, seed=4))
    assert answers == [
        "RATE THE EDIT FROM 1 TO 5.",
        "BEFORE:|AFTER:|COMPARE.",
        "DESCRIBE A RED CAR.",
        "WHAT IS THIS?",
    ]
    (chat,) = fake.chats
    assert chat["sampling_params"].kwargs == {"max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 4}
    contents = [c[-1]["content"] for c in chat["messages"]]
    assert isinstance(contents[2], str)  # text only: one string, as for the server
    images = [
        part["image_pil"]
        for content in contents[:2] + contents[3:]
        for part in content
        if "image_pil" in part
    ]
    assert [image.mode for image in images] == ["RGB"] * 4

    # A regex goes to the engine as structured outputs, and the (matching) answer is not stripped.
    assert backend.generate(requests[2:3], Decoding(max_new_tokens=64, regex="[A-Z .]+")) == [
        " DESCRIBE A RED CAR. "
    ]
    guided = fake.chats.pop()["sampling_params"].kwargs
    assert guided.pop("structured_outputs").kwargs == {"regex": "[A-Z .]+"}
    assert guided == {"max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "seed": 0}

    probs = backend.next_token_probs(requests, ["Score: ", "", "The answer is", ""], ["1", "2"])
    continued, fresh = fake.chats[1:]
    assert (continued["add_generation_prompt"], continued["continue_final_message"]) == (False, True)
    assert (fresh["add_generation_prompt"], fresh["continue_final_message"]) == (True, False)
    assert [c[-1]["content"] for c in continued["messages"]] == ["Score: ", "The answer is"]
    assert continued["sampling_params"].kwargs["logprobs"] == 20
    # "Score: ", the user text of request 1, "The answer is", the user text of request 3: order is kept
    assert [row["1"] for row in probs] == [math.exp(-7), math.exp(-23), math.exp(-13), math.exp(-13)]
    assert all(row["2"] == 0.0 for row in probs)

    fake.init_kwargs = {}
    VllmBackend(str(tiny_models[TEXT_NAME]))
    assert "limit_mm_per_prompt" not in fake.init_kwargs
