"""OpenAIBackend (the official `openai` SDK) against a real HTTP server on 127.0.0.1: answers match the
transformers backend that serves them, images travel, vLLM's extensions reach only a vLLM server,
transient failures are retried (bounded, honouring Retry-After, timeouts included), permanent ones are
not, the pool keeps its slots busy around a slow request, and the revision the server reports keys
the cache. Also: vLLM stays an optional import, and VllmBackend drives a stand-in engine correctly
(the real one needs a GPU)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from loopback import (
    Handler,
    LoopbackServer,
    ModelHandler,
    Reply,
    SlowOne,
    completion,
    model_entry,
    request_text,
)
from PIL import Image

from firm_assets.curation.parsers import CAPTION_TEXT
from firm_assets.curation.prompts import load_template
from firm_assets.curation.stage import ChatStage, StageInput, run_chat_stage
from firm_assets.gen.checklists import PLAN_LIMITS
from resources.chat import ChatRequest, Decoding, ImagePart, ModelRef, classify_failure
from resources.models import ModelsResource, load_chat_backend
from resources.openai_backend import ChatAPIError, OpenAIBackend, image_mime, served_revision
from resources.profiles import ChatModelConfig, get_profile
from resources.tiny_models import TEXT_NAME, VL_NAME
from resources.transformers_backend import TransformersBackend
from warehouse.connection import Warehouse

DIGITS = list("12345")
GREEDY = Decoding(max_new_tokens=12)
JUDGE = r'\{"reasoning": "[a-z ]{0,20}", "score": [1-5]\}'
FAST_RETRY = {"retry-after-ms": "10"}  # the SDK's own backoff starts at half a second
HI = ChatRequest(user=("hi",))


@pytest.fixture
def serve() -> Iterator[Callable[..., LoopbackServer]]:
    """Start loopback servers for a test; all are shut down after it."""
    servers: list[LoopbackServer] = []

    def start(handler: Handler, models: list[dict[str, Any]] | None = None) -> LoopbackServer:
        servers.append(LoopbackServer(handler, models or [model_entry("m", "/weights/m")]))
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
    server = LoopbackServer(handler, [model_entry("tiny", vl.model.model_id)])
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


@dataclass
class Tiny:
    """The module's model server, which serves the tiny VL model as "tiny": what it was sent (handler)
    and backends that talk to it (connect(**options), closed after the test)."""

    handler: ModelHandler
    connect: Callable[..., OpenAIBackend]


@pytest.fixture
def tiny(client: Client, model_server: tuple[LoopbackServer, ModelHandler]) -> Tiny:
    server, handler = model_server
    return Tiny(handler, lambda **options: client(server.base_url, "tiny", **options))


def test_model_ref_and_api_key_variable(
    client: Client, serve: Callable[..., LoopbackServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(lambda payload: (200, {}, completion("ok")))
    monkeypatch.setenv("JUDGE_KEY", "secret")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    backend = client(server.base_url + "/", "m", revision="v2", api_key_env="JUDGE_KEY")
    assert backend.model == ModelRef("m", "v2") and backend.model.backend == "openai"
    assert server.model_listings == 0  # a configured revision needs no listing
    assert backend.generate([HI], GREEDY) == ["ok"]
    assert client(server.base_url, "m", revision="v2").generate([HI], GREEDY) == ["ok"]
    monkeypatch.delenv("OPENAI_API_KEY")
    assert client(server.base_url, "m", revision="v2").generate([HI], GREEDY) == ["ok"]
    assert [headers["authorization"] for headers in server.headers] == [
        "Bearer secret",
        "Bearer from-env",
        "Bearer EMPTY",
    ]


def test_served_revision_reads_root_then_created() -> None:
    assert served_revision(model_entry("m", "/weights/a")) == "root:/weights/a"
    assert served_revision(model_entry("m", created=1712345678)) == "created:1712345678"
    with pytest.raises(ValueError, match=r"neither `root` nor `created`.*set `revision`"):
        served_revision({"id": "m", "object": "model"})


def test_revision_comes_from_the_served_models(client: Client, serve: Callable[..., LoopbackServer]) -> None:
    listing = [model_entry("other", "/weights/other"), model_entry("judge", "/weights/judge-v3")]
    server = serve(lambda payload: (200, {}, completion("ok")), listing)
    assert client(server.base_url, "judge").model == ModelRef("judge", "root:/weights/judge-v3")
    assert server.model_listings == 1 and server.calls == 0
    with pytest.raises(ValueError, match=r"does not serve 'missing'; it serves \['judge', 'other'\]"):
        client(server.base_url, "missing")


def test_an_unreadable_model_listing_is_a_clear_error(client: Client) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]
    with pytest.raises(RuntimeError, match=r"cannot read the served models at .*/v1/models.*ConnectError"):
        client(f"http://127.0.0.1:{port}/v1", "m", max_retries=0)


def test_two_servers_with_other_weights_under_one_name_share_no_cache_entries(
    client: Client, serve: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    """Same served name, same prompts: a server with other weights is asked again; one with the same
    weights (another process, same root) is answered from the cache."""

    def answer(weights: str) -> Handler:
        return lambda payload: (200, {}, completion(f"{weights}: {request_text(payload)[-12:]}"))

    old = serve(answer("old"), [model_entry("judge", "/weights/judge-v1")])
    new = serve(answer("new"), [model_entry("judge", "/weights/judge-v2")])
    twin = serve(answer("twin"), [model_entry("judge", "/weights/judge-v1")])
    stage = ChatStage("plans", load_template("checklist_plan"), CAPTION_TEXT, Decoding(max_new_tokens=16))
    inputs = [StageInput(f"p{i}", {"prompt": f"prompt {i}", **PLAN_LIMITS}, {}) for i in range(3)]
    warehouse = Warehouse(tmp_path / "w.duckdb")

    def run(server: LoopbackServer) -> tuple[list[str], int]:
        results, stats = run_chat_stage(stage, client(server.base_url, "judge"), inputs, warehouse, 4)
        return [results[f"p{i}"].outcome.output_text or "" for i in range(3)], stats.model_calls

    first, calls = run(old)
    assert calls == 3 and all(text.startswith("old: ") for text in first)
    second, calls = run(new)
    assert calls == 3 and all(text.startswith("new: ") for text in second)
    assert run(twin) == (first, 0) and twin.calls == 0
    revisions = warehouse.rows("SELECT DISTINCT model_revision FROM inference_cache ORDER BY 1")
    assert revisions == [("root:/weights/judge-v1",), ("root:/weights/judge-v2",)]


def test_generate_matches_the_serving_model(
    tiny: Tiny, vl: TransformersBackend, requests: list[ChatRequest]
) -> None:
    backend = tiny.connect(concurrency=4)
    seen_before = tiny.handler.images_seen
    answers = backend.generate(requests, GREEDY)
    assert answers == [vl.generate([request], GREEDY)[0] for request in requests]
    assert tiny.handler.images_seen - seen_before == sum(len(request.images) for request in requests) == 4
    assert set(tiny.handler.mimes) == {"image/png"}
    sampled = Decoding(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert backend.generate(requests[:2], sampled) == [vl.generate([r], sampled)[0] for r in requests[:2]]
    last = tiny.handler.payloads[-1]
    assert (last["temperature"], last["top_p"], last["seed"], last["max_tokens"]) == (1.0, 0.9, 3, 8)
    assert "structured_outputs" not in last


def test_regex_travels_as_structured_outputs_to_vllm_only(
    tiny: Tiny, vl: TransformersBackend, requests: list[ChatRequest]
) -> None:
    """To a vLLM server, vLLM's current field carries the regex and the answers equal the serving
    model's guided ones; another server is never sent the field and answers unguided."""
    guided = Decoding(max_new_tokens=64, regex=JUDGE)
    count = len(tiny.handler.payloads)
    answers = tiny.connect(concurrency=4).generate(requests, guided)
    assert answers == [vl.generate([request], guided)[0] for request in requests]
    assert all(re.fullmatch(JUDGE, answer) for answer in answers)
    sent = tiny.handler.payloads[count:]
    assert [payload["structured_outputs"] for payload in sent] == [{"regex": JUDGE}] * 4

    count = len(tiny.handler.payloads)
    hosted = tiny.connect(server="openai", concurrency=4)
    unguided = Decoding(max_new_tokens=64)
    assert hosted.generate(requests, guided) == [vl.generate([r], unguided)[0] for r in requests]
    assert not any("structured_outputs" in payload for payload in tiny.handler.payloads[count:])


def test_continuing_a_prefix_needs_a_vllm_server(tiny: Tiny, requests: list[ChatRequest]) -> None:
    hosted = tiny.connect(server="openai")
    count = len(tiny.handler.payloads)
    with pytest.raises(ValueError, match="needs a vLLM server"):
        hosted.next_token_probs(requests[:2], ["Score: ", ""], DIGITS)
    assert len(tiny.handler.payloads) == count  # nothing was sent
    (row,) = hosted.next_token_probs(requests[1:2], [""], DIGITS)
    assert list(row) == DIGITS
    assert "continue_final_message" not in tiny.handler.payloads[-1]


def test_next_token_probs_match_the_serving_model(
    tiny: Tiny, vl: TransformersBackend, requests: list[ChatRequest]
) -> None:
    """With top_logprobs covering the vocabulary every token is reported; the empty prefix is a plain
    generation prompt and only non-empty prefixes ask the server to continue the assistant message."""
    backend = tiny.connect(top_logprobs=len(tiny.handler.vocab))
    prefixes = ["Score: ", "", "The answer is", "Score:"]
    count = len(tiny.handler.payloads)
    probs = backend.next_token_probs(requests, prefixes, DIGITS)
    expected = vl.next_token_probs(requests, prefixes, DIGITS)
    for row, reference in zip(probs, expected, strict=True):
        assert list(row) == DIGITS
        assert row == pytest.approx(reference, abs=1e-4, rel=1e-4)
        assert all(value > 0 for value in row.values())
    sent = tiny.handler.payloads[count:]
    continued = [payload.get("continue_final_message", False) for payload in sent]
    assert sorted(continued) == [False, True, True, True]
    assert all(payload["max_tokens"] == 1 and payload["logprobs"] is True for payload in sent)


def test_generate_probed_matches_the_serving_model(
    tiny: Tiny, vl: TransformersBackend, requests: list[ChatRequest]
) -> None:
    """One request per answer, asking for logprobs: the digits' offsets are rebuilt from the token texts
    and their probabilities read from top_logprobs (a digit outside the server's top list counts 0,
    the generated digit is always there); token texts that do not spell the answer give no positions."""
    judge = Decoding(max_new_tokens=48, regex=JUDGE)
    expected = [vl.generate_probed([request], judge, DIGITS)[0] for request in requests]
    count = len(tiny.handler.payloads)
    answers = tiny.connect().generate_probed(requests, judge, DIGITS)
    assert all(p["logprobs"] is True and p["top_logprobs"] == 20 for p in tiny.handler.payloads[count:])
    for answer, reference in zip(answers, expected, strict=True):
        assert answer.text == reference.text
        assert [p.offset for p in answer.positions] == [p.offset for p in reference.positions] != []
        for position, reference_position in zip(answer.positions, reference.positions, strict=True):
            assert position.probs == pytest.approx(reference_position.probs, rel=1e-6)

    (narrow,) = tiny.connect(top_logprobs=1).generate_probed(requests[:1], judge, DIGITS)
    for position, reference_position in zip(narrow.positions, expected[0].positions, strict=True):
        written = narrow.text[position.offset]
        best = max(reference_position.probs, key=reference_position.probs.__getitem__)
        kept = {written, best}
        assert position.probs == pytest.approx(
            {d: reference_position.probs[d] if d in kept else 0.0 for d in DIGITS}, rel=1e-6
        )


def test_in_memory_images_travel_as_png(tiny: Tiny, vl: TransformersBackend, images: list[ImagePart]) -> None:
    with Image.open(images[1].path) as decoded:  # RGBA from disk, held in memory
        part = ImagePart.from_image(decoded.copy())
    request = ChatRequest(user=(part, "What is this?"))
    count = len(tiny.handler.mimes)
    answers = tiny.connect().generate([request], GREEDY)
    assert tiny.handler.mimes[count:] == ["image/png"]
    assert answers == vl.generate([request], GREEDY)


def test_tokens_outside_the_top_logprobs_are_zero(
    tiny: Tiny, vl: TransformersBackend, requests: list[ChatRequest]
) -> None:
    request, prefix = requests[0], "Score: "
    (everything,) = vl.next_token_probs([request], [prefix], tiny.handler.vocab)
    ranked = sorted(everything, key=lambda token: -everything[token])
    tokens = [*ranked[:2], *DIGITS, ranked[-1]]
    backend = tiny.connect()
    assert backend.top_logprobs == 20
    (row,) = backend.next_token_probs([request], [prefix], tokens)
    assert tiny.handler.payloads[-1]["top_logprobs"] == 20
    top20 = set(ranked[:20])
    for token in tokens:
        assert row[token] == pytest.approx(everything[token] if token in top20 else 0.0, abs=1e-4)
    assert row[ranked[0]] > 0 and row[ranked[-1]] == 0.0


def test_retries_transient_failures_then_succeeds(
    client: Client, serve: Callable[..., LoopbackServer]
) -> None:
    script: list[Reply] = [
        (503, FAST_RETRY, {"error": {"message": "warming up"}}),
        None,
        (502, FAST_RETRY, {}),
    ]

    def handler(payload: dict[str, Any]) -> Reply:
        return script.pop(0) if script else (200, {}, completion("fine"))

    server = serve(handler)
    backend = client(server.base_url, "m", max_retries=4)
    assert backend.generate([HI], GREEDY) == ["fine"]
    assert server.calls == 4  # 503, dropped connection, 502, success


def test_retry_after_is_honoured(client: Client, serve: Callable[..., LoopbackServer]) -> None:
    script: list[Reply] = [(429, {"Retry-After": "2"}, {"error": {"message": "slow down"}})]
    server = serve(lambda payload: script.pop(0) if script else (200, {}, completion("ok")))
    backend = client(server.base_url, "m")
    assert backend.generate([HI], GREEDY) == ["ok"]
    assert server.calls == 2
    # The SDK's own first backoff is at most half a second: this wait is the server's.
    assert server.call_times[1] - server.call_times[0] >= 1.95


def test_a_400_is_permanent_and_not_retried(client: Client, serve: Callable[..., LoopbackServer]) -> None:
    server = serve(lambda payload: (400, FAST_RETRY, {"error": {"message": "image could not be decoded"}}))
    backend = client(server.base_url, "m")
    with pytest.raises(ChatAPIError, match=r"failed \(400\): image could not be decoded$") as caught:
        backend.generate([HI], GREEDY)
    assert caught.value.status_code == 400 and server.calls == 1
    assert classify_failure(caught.value).transient is False


def test_a_503_is_retried_then_transient(client: Client, serve: Callable[..., LoopbackServer]) -> None:
    """vLLM's own error shape ({"object": "error", "message"}) gives the reason."""
    server = serve(lambda payload: (503, FAST_RETRY, {"object": "error", "message": "overloaded"}))
    backend = client(server.base_url, "m", max_retries=3)
    with pytest.raises(ChatAPIError, match=r"failed \(503\): overloaded$") as caught:
        backend.generate([HI], GREEDY)
    assert caught.value.status_code == 503 and server.calls == 4
    assert classify_failure(caught.value).transient is True


def test_a_timeout_is_retried_then_transient(client: Client, serve: Callable[..., LoopbackServer]) -> None:
    def slow(payload: dict[str, Any]) -> Reply:
        time.sleep(2.0)
        return 200, {}, completion("too late")

    server = serve(slow)
    backend = client(server.base_url, "m", timeout_s=0.2, max_retries=1)
    started = time.monotonic()
    with pytest.raises(ChatAPIError, match=r"\(no response\): ReadTimeout") as caught:
        backend.generate([HI], GREEDY)
    assert time.monotonic() - started < 2.0  # neither attempt waited for the 2 s answer
    assert caught.value.status_code is None and server.calls == 2
    assert classify_failure(caught.value).transient is True


def test_unreachable_server_raises_after_retries(client: Client) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # nothing listens there once closed
    backend = client(f"http://127.0.0.1:{port}/v1", "m", revision="r", max_retries=1)
    with pytest.raises(ChatAPIError, match=r"\(no response\): ConnectError") as caught:
        backend.generate([HI], GREEDY)
    assert caught.value.status_code is None and classify_failure(caught.value).transient is True


def test_concurrency_is_bounded_and_order_kept(client: Client, serve: Callable[..., LoopbackServer]) -> None:
    def handler(payload: dict[str, Any]) -> Reply:
        time.sleep(0.03)
        return 200, {}, completion(payload["messages"][-1]["content"].upper())

    server = serve(handler)
    backend = client(server.base_url, "m", concurrency=3)
    requests = [ChatRequest(user=(f"request {index}",)) for index in range(18)]
    assert backend.generate(requests, GREEDY) == [f"REQUEST {index}" for index in range(18)]
    assert server.max_in_flight == 3


def test_a_slow_request_holds_one_slot_not_the_pool(
    client: Client, serve: Callable[..., LoopbackServer]
) -> None:
    """One slow request among 24 with 4 slots: the other 3 slots work through all the rest while it
    runs, so the batch takes about as long as the slow request, not rounds of it."""
    handler = SlowOne(slow_s=3.0)
    server = serve(handler)
    backend = client(server.base_url, "m", concurrency=4)
    texts = ["slow", *(f"fast {index}" for index in range(23))]
    assert backend.generate([ChatRequest(user=(text,)) for text in texts], GREEDY) == texts
    assert server.max_in_flight == 4
    # the first round (up to 3 fast ones) may reach the server before the slow one has started
    assert handler.started_during_slow >= 23 - 3
    assert max(handler.finished[text] for text in texts[1:]) < handler.finished["slow"]


def test_callers_share_the_pool_so_the_next_batch_fills_free_slots(
    client: Client, serve: Callable[..., LoopbackServer]
) -> None:
    """While one caller's batch waits on its slow request, another caller's batch (e.g. the next batch
    of a stage run one ahead) runs on the free slots, and the bound holds for both together."""
    handler = SlowOne(slow_s=3.0)
    server = serve(handler)
    backend = client(server.base_url, "m", concurrency=3)
    slow_batch = threading.Thread(target=backend.generate, args=([ChatRequest(user=("slow",))], GREEDY))
    slow_batch.start()
    assert handler.slow_running.wait(5)
    fast = [ChatRequest(user=(f"fast {index}",)) for index in range(12)]
    assert backend.generate(fast, GREEDY) == [f"fast {index}" for index in range(12)]
    assert handler.slow_running.is_set()  # all done before the slow one answered
    slow_batch.join()
    assert handler.started_during_slow == 12 and server.max_in_flight == 3


def test_profiles_configure_each_role(
    serve: Callable[..., LoopbackServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role's config reaches its backend: server kind, API key variable, concurrency, retries,
    timeout; the resource's overrides point every chat role at a server."""
    judge = get_profile("vllm-server").judge
    assert (judge.backend, judge.server, judge.api_key_env) == ("openai", "vllm", "VLLM_API_KEY")
    handler = SlowOne(slow_s=1.0)
    server = serve(
        lambda payload: (503, FAST_RETRY, {}) if "fail" in request_text(payload) else handler(payload)
    )
    monkeypatch.setenv("ROLE_KEY", "role-secret")
    config = ChatModelConfig(
        backend="openai",
        model="m",
        base_url=server.base_url,
        server="openai",
        api_key_env="ROLE_KEY",
        concurrency=2,
        max_retries=1,
        timeout_s=0.3,
    )
    backend = load_chat_backend(config)
    try:
        assert backend is load_chat_backend(config)
        assert backend.server == "openai" and backend.model == ModelRef("m", "root:/weights/m")
        texts = [f"fast {index}" for index in range(6)]
        assert backend.generate([ChatRequest(user=(text,)) for text in texts], GREEDY) == texts
        assert server.max_in_flight == 2 and server.headers[0]["authorization"] == "Bearer role-secret"
        calls = server.calls
        with pytest.raises(ChatAPIError, match=r"\(503\)"):
            backend.generate([ChatRequest(user=("fail",))], GREEDY)
        assert server.calls - calls == 2  # max_retries=1
        with pytest.raises(ChatAPIError, match="ReadTimeout"):
            backend.generate([ChatRequest(user=("slow",))], GREEDY)
    finally:
        backend.close()
    resource = ModelsResource(chat_backend="openai", base_url="http://server/v1", chat_server="openai")
    for role in ("captioner", "judge", "planner"):
        config = getattr(resource.settings(), role)
        assert (config.backend, config.base_url, config.server) == ("openai", "http://server/v1", "openai")
    with pytest.raises(ValueError, match="server must be one of"):
        OpenAIBackend(server.base_url, "m", revision="r", server="tgi")


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
                    answer = f" {text.upper()} "
                    token_ids = fake.tokenizer.encode(answer, add_special_tokens=False)
                    named = kwargs["sampling_params"].kwargs.get("logprob_token_ids")
                    if named:  # asked for named ids: at every step, id at rank r has logprob -(r + 1)
                        logprobs = [
                            {
                                wanted: SimpleNamespace(logprob=-(rank + 1.0))
                                for rank, wanted in enumerate(named)
                            }
                            for _ in token_ids
                        ]
                    completion = SimpleNamespace(text=answer, token_ids=token_ids, logprobs=logprobs)
                    prompt_ids = fake.tokenizer.encode(text, add_special_tokens=False)
                    outputs.append(SimpleNamespace(outputs=[completion], prompt_token_ids=prompt_ids))
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
    # the engine's own token ids are counted: the stand-in answers " <TEXT> " to the prompt's text
    tokens_in, tokens_out = backend.usage.snapshot()
    assert tokens_out == sum(len(vl.tokenizer.encode(f" {a} ", add_special_tokens=False)) for a in answers)
    assert tokens_in > 0
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

    # one pass: the digits' log-probabilities are asked by token id, read where the answer writes a digit
    (probed,) = backend.generate_probed(requests[:1], Decoding(max_new_tokens=32), DIGITS)
    sent = fake.chats.pop()["sampling_params"].kwargs
    assert sent["logprob_token_ids"] == [vl.tokenizer.encode(d, add_special_tokens=False)[0] for d in DIGITS]
    assert probed.text == " RATE THE EDIT FROM 1 TO 5. "
    assert [probed.text[p.offset] for p in probed.positions] == ["1", "5"]
    expected = {d: math.exp(-(rank + 1.0)) for rank, d in enumerate(DIGITS)}
    assert all(p.probs == pytest.approx(expected) for p in probed.positions)

    fake.init_kwargs = {}
    VllmBackend(str(tiny_models[TEXT_NAME]))
    assert "limit_mm_per_prompt" not in fake.init_kwargs
