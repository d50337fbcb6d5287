"""One failed item never fails a stage: a batch that raises is narrowed to the failing items, each of
which becomes its own recorded failure; transient ones are left for the next run, permanent ones are
cached with their reason; the batch's other answers are committed. Real backends throughout: the tiny
transformers and diffusers models, and the OpenAI-compatible client over real HTTP."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from loopback import FailingHandler, LoopbackServer, completion, request_text
from PIL import Image

from firm_assets.curation.cache import Outcome, compute_narrowed
from firm_assets.curation.costs import CostMeter
from firm_assets.curation.gates import render_failure_rate
from firm_assets.curation.generation import ImageJob, Owner, render_for_all, run_image_stage
from firm_assets.curation.parsers import CAPTION_TEXT
from firm_assets.curation.prompts import load_template
from firm_assets.curation.stage import ChatStage, StageInput, run_chat_stage
from firm_assets.gen.checklists import PLAN_LIMITS
from resources.chat import Decoding, ImagePart, InputImageError, classify_failure, load_rgb
from resources.diffusion import DiffusionBackend
from resources.openai_backend import ChatAPIError, OpenAIBackend
from resources.profiles import ImageModelConfig
from resources.tiny_models import VL_NAME
from resources.transformers_backend import TransformersBackend
from warehouse.connection import Warehouse

CAPTIONS = ChatStage(
    "difference_captions", load_template("difference_caption"), CAPTION_TEXT, Decoding(max_new_tokens=16)
)
# A text stage: the planner's template, read back as free text, so any answer the server gives parses.
PLANS = ChatStage("plans", load_template("checklist_plan"), CAPTION_TEXT, Decoding(max_new_tokens=16))
CACHE_ROWS = "SELECT sample_id, ok, failure, output_text FROM inference_cache ORDER BY sample_id"


def _part(path: Path) -> ImagePart:
    return ImagePart(path, hashlib.sha256(path.read_bytes()).hexdigest())


def _image(folder: Path, name: str, size: tuple[int, int], color: str) -> ImagePart:
    path = folder / name
    Image.new("RGB", size, color).save(path)
    return _part(path)


def _cache(warehouse: Warehouse) -> dict[str, tuple[bool, str | None, str | None]]:
    return {sample: (ok, failure, text) for sample, ok, failure, text in warehouse.rows(CACHE_ROWS)}


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse.duckdb")


# --- classification: one place, for chat and image stages alike -----------------------------------


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (InputImageError("input image x.png: UnidentifiedImageError"), False),
        (ChatAPIError(400, "bad image"), False),
        (ChatAPIError(404, "no such model"), False),
        (ChatAPIError(422, "unprocessable"), False),
        (ChatAPIError(408, "request timeout"), True),
        (ChatAPIError(429, "rate limited"), True),
        (ChatAPIError(500, "internal"), True),
        (ChatAPIError(503, "overloaded"), True),
        (ChatAPIError(None, "ConnectTimeout: timed out"), True),
        (ChatAPIError(200, "response without choices"), True),
        (torch.OutOfMemoryError("CUDA out of memory"), True),
        (MemoryError(), True),
        (TimeoutError("timed out"), True),
        (ConnectionResetError("reset by peer"), True),
        (ValueError("absolute aspect ratio must be smaller than 200"), True),
    ],
)
def test_classify_failure(error: Exception, transient: bool) -> None:
    failure = classify_failure(error)
    assert failure.transient is transient
    assert failure.reason == f"{type(error).__name__}: {error}"


def test_load_rgb_decodes_or_names_the_bad_input(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("L", (5, 3), 200).save(good)
    image = load_rgb(good)
    assert (image.mode, image.size, image.getpixel((0, 0))) == ("RGB", (5, 3), (200, 200, 200))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    noisy = tmp_path / "noisy.png"
    Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3)).save(noisy)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(noisy.read_bytes()[:2000])  # the header reads, the pixels do not
    for path, cause in (
        (garbage, "UnidentifiedImageError"),
        (tmp_path / "missing.png", "FileNotFoundError"),
        (truncated, "OSError: image file is truncated"),
    ):
        with pytest.raises(InputImageError, match=rf"input image {path}: {cause}") as raised:
            load_rgb(path)
        assert classify_failure(raised.value).transient is False


# --- narrowing a batch that raises -----------------------------------------------------------------


def test_a_raising_batch_is_bisected_to_the_bad_item() -> None:
    calls: list[list[int]] = []

    def compute(batch: list[int]) -> list[Outcome]:
        calls.append(batch)
        if 3 in batch:
            raise ChatAPIError(400, "item 3 is refused")
        return [Outcome(str(item), {"value": item}) for item in batch]

    outcomes = compute_narrowed(compute, list(range(8)))
    assert [out.output_text for out in outcomes] == ["0", "1", "2", None, "4", "5", "6", "7"]
    assert outcomes[3].failure == "error: ChatAPIError: chat completions failed (400): item 3 is refused"
    assert outcomes[3].transient is False
    # 8 fail -> 4 fail -> (2 ok, 2 fail -> 1 ok, 1 fail) -> 4 ok: seven calls, 22 items computed
    assert calls == [list(range(8)), [0, 1, 2, 3], [0, 1], [2, 3], [2], [3], [4, 5, 6, 7]]


def test_a_batch_that_works_is_computed_once() -> None:
    calls: list[list[int]] = []

    def compute(batch: list[int]) -> list[Outcome]:
        calls.append(batch)
        return [Outcome(str(item), {}) for item in batch]

    assert [out.output_text for out in compute_narrowed(compute, [1, 2, 3])] == ["1", "2", "3"]
    assert calls == [[1, 2, 3]]


# --- chat stages through the real transformers backend ---------------------------------------------


@pytest.fixture(scope="module")
def vl(tiny_models: dict[str, Path]) -> TransformersBackend:
    return TransformersBackend(str(tiny_models[VL_NAME]), batch_size=4)


def _caption_inputs(folder: Path, edited: dict[str, ImagePart]) -> list[StageInput]:
    source = _image(folder, "source.png", (64, 64), "white")
    return [StageInput(sample, {}, {"source": source, "edited": image}) for sample, image in edited.items()]


def test_an_undecodable_image_is_a_cached_failure_and_the_batch_is_committed(
    vl: TransformersBackend, warehouse: Warehouse, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image decoder could read")
    edited = {
        "a": _image(tmp_path, "a.png", (64, 64), "red"),
        "b": _image(tmp_path, "b.png", (48, 80), "blue"),
        "c": _part(broken),
        "d": _image(tmp_path, "d.png", (80, 48), "green"),
    }
    inputs = _caption_inputs(tmp_path, edited)
    results, stats = run_chat_stage(CAPTIONS, vl, inputs, warehouse, batch_size=4, run_id="first")

    assert (stats.model_calls, stats.failures, stats.transient_failures) == (4, 1, 0)
    cache = _cache(warehouse)
    assert set(cache) == {"a", "b", "c", "d"}
    ok, failure, text = cache["c"]
    assert not ok and text is None
    assert failure.startswith(f"error: InputImageError: input image {broken}: UnidentifiedImageError")
    assert results["c"].outcome.failure == failure
    for sample in "abd":
        ok, failure, text = cache[sample]
        assert results[sample].outcome.output_text == text
        assert (ok, failure) == (True, None) and results[sample].outcome.parsed == {"caption": text.strip()}

    # the failure is permanent: a second run asks the model nothing and reports the same reason
    again, stats = run_chat_stage(CAPTIONS, vl, inputs, warehouse, batch_size=4, run_id="second")
    assert (stats.model_calls, stats.cache_hits, stats.failures) == (0, 4, 1)
    assert again["c"].outcome.failure == results["c"].outcome.failure


def test_a_model_exception_mid_batch_loses_no_other_answer(
    vl: TransformersBackend, warehouse: Warehouse, tmp_path: Path
) -> None:
    # The Qwen-VL image processor refuses an aspect ratio over 200 with a ValueError: a real model
    # exception, raised for the whole batch it is in.
    edited = {
        "a": _image(tmp_path, "a.png", (64, 64), "red"),
        "b": _image(tmp_path, "thin.png", (1, 600), "blue"),
        "c": _image(tmp_path, "c.png", (48, 80), "green"),
    }
    inputs = _caption_inputs(tmp_path, edited)
    results, stats = run_chat_stage(CAPTIONS, vl, inputs, warehouse, batch_size=3, run_id="first")

    assert (stats.model_calls, stats.failures, stats.transient_failures) == (3, 1, 1)
    assert results["b"].outcome.failure.startswith("transient: ValueError: absolute aspect ratio")
    cache = _cache(warehouse)
    assert set(cache) == {"a", "c"}  # the transient failure is not cached; both answers are
    for sample in "ac":
        assert cache[sample] == (True, None, results[sample].outcome.output_text)

    # the next run asks again for the failed item only
    _, stats = run_chat_stage(CAPTIONS, vl, inputs, warehouse, batch_size=3, run_id="second")
    assert (stats.model_calls, stats.cache_hits, stats.failures) == (1, 2, 1)


# --- chat stages through the OpenAI-compatible backend over real HTTP --------------------------------


def _echo(payload: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A server that answers with the fenced user text of the message (where the prompt is)."""
    user = request_text({"messages": payload["messages"][-1:]})
    return 200, {}, completion("seen: " + user.split("<prompt>", 1)[1].split("</prompt>", 1)[0])


@pytest.fixture
def failing_server() -> Iterator[tuple[LoopbackServer, FailingHandler]]:
    handler = FailingHandler(_echo, {"BAD-REQUEST": 400, "OVERLOADED": 503})
    server = LoopbackServer(handler)
    yield server, handler
    server.close()


def _plan_inputs(prompts: dict[str, str]) -> list[StageInput]:
    return [StageInput(sample, {"prompt": prompt, **PLAN_LIMITS}, {}) for sample, prompt in prompts.items()]


def test_http_400_is_cached_and_503_is_retried_by_the_next_run(
    failing_server: tuple[LoopbackServer, FailingHandler], warehouse: Warehouse
) -> None:
    server, handler = failing_server
    prompts = {"a": "a red car", "b": "BAD-REQUEST a dog", "c": "OVERLOADED a cat", "d": "a blue house"}
    inputs = _plan_inputs(prompts)
    with OpenAIBackend(server.base_url, "judge", revision="r1", max_retries=1) as backend:
        results, stats = run_chat_stage(PLANS, backend, inputs, warehouse, batch_size=4, run_id="first")
        expected = {sample: results[sample].outcome.output_text for sample in "ad"}
        assert (stats.failures, stats.transient_failures) == (2, 1)
        assert (
            results["b"].outcome.failure
            == "error: ChatAPIError: chat completions failed (400): refused BAD-REQUEST with 400"
        )
        assert (
            results["c"].outcome.failure
            == "transient: ChatAPIError: chat completions failed (503): refused OVERLOADED with 503"
        )
        cache = _cache(warehouse)
        assert set(cache) == {"a", "b", "d"}
        assert cache["b"] == (False, results["b"].outcome.failure, None)
        for sample in "ad":
            assert cache[sample] == (True, None, expected[sample])
            assert expected[sample].startswith("seen: ") and prompts[sample] in expected[sample]

        handler.failures = {"BAD-REQUEST": 400}  # the overloaded server has recovered
        refused_before, calls_before = len(handler.refused), server.calls
        again, stats = run_chat_stage(PLANS, backend, inputs, warehouse, batch_size=4, run_id="second")
    assert (stats.model_calls, stats.cache_hits, stats.failures) == (1, 3, 1)
    assert server.calls - calls_before == 1 and len(handler.refused) == refused_before  # "b" is not re-sent
    assert again["c"].outcome.ok and again["c"].outcome.output_text == _cache(warehouse)["c"][2]
    assert {sample: again[sample].outcome.output_text for sample in "ad"} == expected


class EveryTenth:
    """A server that answers its 10th, 20th, ... request 400 (refused) and its 5th, 15th, ... 429 (busy,
    retry in 5 ms), and every other request with its prompt: whatever the batch, a refusal is one
    request and a busy answer one SDK retry."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.refused: list[str] = []
        self.busy = 0

    def __call__(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self.lock:
            self.requests += 1
            number = self.requests
        if number % 10 == 0:
            with self.lock:
                self.refused.append(request_text(payload))
            return 400, {}, {"error": {"message": "refused", "type": "invalid_request_error"}}
        if number % 10 == 5:
            with self.lock:
                self.busy += 1
            return 429, {"retry-after-ms": "5"}, {"error": {"message": "busy", "type": "rate_limit"}}
        return _echo(payload)


def test_one_refused_request_costs_one_request(warehouse: Warehouse) -> None:
    """101 prompts, 1 in 10 requests refused: the stage sends each prompt once, plus the SDK's retry of
    each busy answer (the backend returns per-item outcomes, so no answered item is asked again)."""
    handler = EveryTenth()
    server = LoopbackServer(handler)
    prompts = {f"p{i:03d}": f"prompt number {i}" for i in range(101)}
    try:
        with OpenAIBackend(server.base_url, "judge", revision="r1", concurrency=4, max_retries=4) as backend:
            results, stats = run_chat_stage(PLANS, backend, _plan_inputs(prompts), warehouse, 16, "first")
    finally:
        server.close()
    assert handler.refused and handler.busy  # both kinds of failure happened
    assert server.calls == len(prompts) + handler.busy  # distinct prompts + retries of transient failures
    failed = {sample for sample, result in results.items() if not result.outcome.ok}
    assert len(failed) == len(handler.refused) == stats.failures and stats.transient_failures == 0
    for sample in failed:
        assert results[sample].outcome.failure == (
            "error: ChatAPIError: chat completions failed (400): refused"
        )
        assert any(prompts[sample] in text for text in handler.refused)
    assert stats.model_calls == len(prompts)
    assert len(_cache(warehouse)) == len(prompts)  # answers and refusals alike are cached


def test_a_backend_that_fails_every_item_is_not_asked_for_the_rest(warehouse: Warehouse) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inputs = _plan_inputs({f"p{i}": f"prompt {i}" for i in range(6)})
    with OpenAIBackend(f"http://127.0.0.1:{port}/v1", "judge", revision="r1", max_retries=0) as backend:
        results, stats = run_chat_stage(PLANS, backend, inputs, warehouse, batch_size=2, run_id="down")
    assert (stats.model_calls, stats.failures, stats.transient_failures) == (2, 6, 6)
    for sample in ("p0", "p1"):
        assert results[sample].outcome.failure.startswith(
            "transient: ChatAPIError: chat completions failed (no response): ConnectError"
        )
    for sample in ("p2", "p3", "p4", "p5"):
        assert results[sample].outcome.failure.startswith(
            "transient: not sent, a whole batch before it failed (ChatAPIError"
        )
    assert _cache(warehouse) == {}


# --- image stages --------------------------------------------------------------------------------


def test_a_profile_with_no_image_models_renders_nothing(warehouse: Warehouse) -> None:
    """`editors: []` (a profile whose candidates are only the imported edits): no render, no call, no
    cost line, and the stage's metadata still has its rate."""
    owners = [Owner("r0", "make it blue", "source.png", "0" * 64)]
    meter = CostMeter()
    rendered, metadata = render_for_all(
        "edit_candidates", "edit@1", [], [0, 1], owners, None, warehouse, "r", meter
    )
    assert (rendered, metadata, meter.lines) == ([], {"calls_per_s": 0.0}, [])


def test_an_edit_with_a_missing_source_is_a_cached_failure(
    tiny_model_dir: Path, warehouse: Warehouse, tmp_path: Path
) -> None:
    config = ImageModelConfig("tiny:tiny-flux-kontext", steps=1, guidance=2.5, size=64)
    editor = DiffusionBackend(str(tiny_model_dir / "tiny-flux-kontext"))
    source = _image(tmp_path, "source.png", (40, 40), "red")
    missing = tmp_path / "gone.png"
    jobs = [
        ImageJob("ok-0", Owner("r0", "make it blue", str(source.path), source.sha256), 0),
        ImageJob("missing", Owner("r1", "make it blue", str(missing), "0" * 64), 0),
        ImageJob("ok-1", Owner("r0", "make it blue", str(source.path), source.sha256), 1),
    ]
    store = tmp_path / "images"
    results, stats = run_image_stage(
        "edit_candidates", "edit@1", config, editor, jobs, warehouse, store, "first"
    )
    assert (stats.model_calls, stats.failures, stats.transient_failures) == (3, 1, 0)
    assert results["missing"].outcome.failure == (
        f"error: InputImageError: input image {missing}: FileNotFoundError: "
        f"[Errno 2] No such file or directory: '{missing}'"
    )
    cache = _cache(warehouse)
    assert cache["missing"] == (False, results["missing"].outcome.failure, None)
    for sample in ("ok-0", "ok-1"):
        sha = results[sample].outcome.parsed["image_sha"]
        assert cache[sample] == (True, None, sha)
        assert (
            hashlib.sha256(Path(results[sample].outcome.parsed["image_path"]).read_bytes()).hexdigest() == sha
        )
    _, stats = run_image_stage("edit_candidates", "edit@1", config, editor, jobs, warehouse, store, "second")
    assert (stats.model_calls, stats.cache_hits) == (0, 3)


# --- the image stages' failure-rate gate -----------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "passed", "rate"),
    [
        ({"renders": 10, "failures": 2, "transient_failures": 1}, True, 0.2),
        ({"renders": 4, "failures": 1}, False, 0.25),
        ({"renders": 3, "failures": 3, "transient_failures": 3}, False, 1.0),
        ({"renders": 0, "failures": 0}, True, 0.0),
    ],
)
def test_render_failure_rate(metadata: dict[str, int], passed: bool, rate: float) -> None:
    result = render_failure_rate(metadata)
    assert result.passed is passed
    assert result.metadata["failure_rate"].value == rate
    assert result.metadata["failures"].value == metadata["failures"]
    assert result.metadata["transient_failures"].value == metadata.get("transient_failures", 0)
