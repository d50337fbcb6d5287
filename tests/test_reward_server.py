"""The reward server over real HTTP on loopback (uvicorn in a thread), scoring with the real
CriticScorer on the tiny critic; plus unit tests of its pure parts (image checks, retry delays,
reward overrides, batch waits)."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from loopback import AppServer, wait_ready
from PIL import Image
from pydantic import ValidationError

from firm_assets.critics.rewards import RewardConfig
from firm_assets.critics.scoring import CriticScorer, EditQuery, GenQuery, ScoreMode
from firm_assets.serving.app import create_app, reward_config
from firm_assets.serving.batching import Batcher, failed_scores, pixel_budget
from firm_assets.serving.client import RewardClient, RewardServerError, retry_delay
from firm_assets.serving.settings import ServerSettings
from firm_assets.serving.wire import (
    EditItem,
    EditRequest,
    EditRewardOverride,
    GenItem,
    GenRequest,
    GenRewardOverride,
    ImageLimits,
    ImageRejected,
    encode_image,
    fitted_size,
    load_image,
    probe_image,
)
from resources.tiny_models import MAX_PIXELS, VL_NAME


def png(color: str | tuple[int, int, int] = "red", size: tuple[int, int] = (32, 32)) -> str:
    return encode_image(Image.new("RGB", size, color))


def edit_item(instruction: str = "make it blue", **changes: Any) -> dict[str, Any]:
    return {"source": png("red"), "edited": png("blue"), "instruction": instruction, **changes}


ONE_GEN = GenRequest(items=[GenItem(image=png(size=(8, 8)), prompt="x")])  # for the client's refusals


@pytest.fixture(scope="module")
def critic(tiny_models: dict[str, Path]) -> CriticScorer:
    """The tiny critic, loaded once for the module (32 new tokens: the shortest answers that still
    parse, to keep the tests fast); each test's server hands it to its one worker."""
    return CriticScorer.load(str(tiny_models[VL_NAME]), max_new_tokens=32)


@pytest.fixture
def serve(critic: CriticScorer) -> Iterator[Callable[..., AppServer]]:
    """Start a server with the given settings (and scorer factory); all are closed after the test."""
    servers: list[AppServer] = []

    def start(factory: Callable[[], Any] | None = None, **settings: Any) -> AppServer:
        server = AppServer(create_app(ServerSettings(**settings), factory or (lambda: critic)))
        servers.append(server)
        wait_ready(server.base_url)
        return server

    yield start
    for server in servers:
        server.close()


class Delayed:
    """The real scorer behind a controlled pause before each batch (and optionally an exception for
    queries whose text contains `explode`), so backpressure, timeouts and batch failures can be
    provoked deterministically; it records each batch's size."""

    def __init__(self, inner: CriticScorer, delay_s: float, explode: str | None = None) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.explode = explode
        self.critic_version = inner.critic_version
        self.batches: list[int] = []

    def _pause(self, texts: list[str]) -> None:
        self.batches.append(len(texts))
        time.sleep(self.delay_s)
        if self.explode is not None and any(self.explode in text for text in texts):
            raise RuntimeError(f"critic blew up on {self.explode!r}")

    def score_edit(self, queries: Sequence[EditQuery], mode: ScoreMode = "expectation") -> list[Any]:
        self._pause([q.instruction for q in queries])
        return self.inner.score_edit(queries, mode)

    def score_gen(self, queries: Sequence[GenQuery], mode: ScoreMode = "expectation") -> list[Any]:
        self._pause([q.prompt for q in queries])
        return self.inner.score_gen(queries, mode)


def normalised(score: float) -> float:
    return (score - 1) / 4


# --- pure parts -------------------------------------------------------------------------------------

LIMITS = ImageLimits(max_bytes=10_000, max_pixels=64 * 64)


def decode_image(data: str, limits: ImageLimits, budget: int | None = None) -> Image.Image:
    return load_image(probe_image(data, limits), budget)


def test_decode_image_accepts_png_jpeg_and_data_urls() -> None:
    image = decode_image(png((10, 20, 30), (8, 4)), LIMITS)
    assert image.size == (8, 4) and image.mode == "RGB" and image.getpixel((0, 0)) == (10, 20, 30)
    buffer = io.BytesIO()
    Image.new("L", (5, 5), 200).save(buffer, format="JPEG")
    jpeg = base64.b64encode(buffer.getvalue()).decode()
    assert decode_image(jpeg, LIMITS).mode == "RGB"
    assert decode_image(f"data:image/jpeg;base64,{jpeg}", LIMITS).size == (5, 5)


def test_probe_reads_the_canvas_without_decoding() -> None:
    probe = probe_image(png("red", (60, 50)), LIMITS)
    assert (probe.width, probe.height, probe.pixels) == (60, 50, 3000)


@pytest.mark.parametrize(
    ("size", "budget", "expected"),
    [
        ((100, 50), None, (100, 50)),
        ((100, 50), 5000, (100, 50)),  # within the budget: as is
        ((100, 50), 1250, (50, 25)),  # a quarter of the pixels: half each side
        ((300, 100), 2700, (90, 30)),
        ((7, 3), 1, (1, 1)),
    ],
)
def test_fitted_size_keeps_the_aspect_within_the_budget(
    size: tuple[int, int], budget: int | None, expected: tuple[int, int]
) -> None:
    assert fitted_size(*size, budget) == expected


def test_images_over_the_critics_pixel_budget_are_shrunk_before_batching(critic: CriticScorer) -> None:
    """The tiny critic's processor keeps MAX_PIXELS pixels of an image: a 200x100 PNG is decoded to
    the largest 2:1 size within them; a JPEG shrinks the same way."""
    assert pixel_budget(critic) == MAX_PIXELS
    limits = ImageLimits(max_bytes=10**6, max_pixels=10**6)
    image = decode_image(png("green", (200, 100)), limits, pixel_budget(critic))
    assert image.size == fitted_size(200, 100, MAX_PIXELS) and image.width * image.height <= MAX_PIXELS
    buffer = io.BytesIO()
    Image.new("RGB", (400, 400), "blue").save(buffer, format="JPEG")
    jpeg = decode_image(base64.b64encode(buffer.getvalue()).decode(), limits, MAX_PIXELS)
    assert jpeg.size == fitted_size(400, 400, MAX_PIXELS)


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        ("not base64 at all!", 400, "not valid base64"),
        (base64.b64encode(b"hello, not an image").decode(), 400, "not a PNG or JPEG"),
        ("data:image/png,abcd", 400, "must be base64"),
        (png("red", (65, 64)), 413, "65x64 pixels"),
        ("A" * 20_000, 413, "larger than 10000 bytes"),
    ],
)
def test_decode_image_rejects_with_status_and_reason(data: str, status: int, words: str) -> None:
    with pytest.raises(ImageRejected, match=words) as caught:
        decode_image(data, LIMITS)
    assert caught.value.status == status


def test_decode_image_refuses_other_formats_and_truncated_files() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="GIF")
    with pytest.raises(ImageRejected, match="not a PNG or JPEG") as caught:
        decode_image(base64.b64encode(buffer.getvalue()).decode(), LIMITS)
    assert caught.value.status == 400
    truncated = base64.b64decode(png("red", (40, 40)))[:-30]
    with pytest.raises(ImageRejected) as caught:
        decode_image(base64.b64encode(truncated).decode(), LIMITS)
    assert caught.value.status == 400


def test_retry_delay_honours_retry_after_then_backs_off() -> None:
    assert retry_delay(httpx.Response(429, headers={"Retry-After": "3"}), 0, 0.5, 30) == 3
    # Retry-After is the server's estimate (a critic load can take minutes): only the deadline cuts it
    assert retry_delay(httpx.Response(503, headers={"Retry-After": "300"}), 0, 0.5, 30) == 300
    assert retry_delay(httpx.Response(503), 2, 0.5, 30) == 2.0  # 0.5 * 2**2
    assert retry_delay(None, 7, 0.5, 30) == 30
    assert retry_delay(None, 0, 0.5, 30) == 0.5


def test_the_client_gives_up_at_its_deadline() -> None:
    """Nothing listens on port 9: connection errors are retried with backoff until the deadline."""
    client = RewardClient("http://127.0.0.1:9", deadline_s=1.0, backoff_s=0.1, max_backoff_s=0.2)
    started = time.monotonic()
    with pytest.raises(RewardServerError, match=r"cannot reach the reward server.*gave up after 1 s"):
        client.gen(ONE_GEN)
    assert 1.0 <= time.monotonic() - started < 10 and client.retries >= 3


def test_a_server_that_never_answers_ends_the_call_at_its_deadline() -> None:
    """A socket that takes the connection and never answers (a stopped server): the exchange is cut
    to the call's deadline instead of the client's 300 s exchange timeout, and it is not resent."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = RewardClient(f"http://127.0.0.1:{silent.getsockname()[1]}", deadline_s=1.0)
        with pytest.raises(RewardServerError, match=r"no answer in 1 s \(gave up after 1 s\)"):
            client.gen(ONE_GEN)
        assert client.retries == 0
        client.close()


def test_reward_override_changes_only_what_it_names() -> None:
    cme = RewardConfig.cme()
    assert reward_config(None, cme) == cme
    changed = reward_config(EditRewardOverride(w2=0.1, normalisation="over5"), cme)
    assert (changed.formula, changed.w1, changed.w2, changed.normalisation) == ("cme", 0.6, 0.1, "over5")
    ablation = reward_config(EditRewardOverride(formula="execution_only"), cme)
    assert (ablation.formula, ablation.w1, ablation.w2) == ("execution_only", 0.6, 0.4)
    assert reward_config(EditRewardOverride(w1=0), cme).w1 == 0  # the default w2 stays
    with pytest.raises(ValidationError, match="'cme', 'execution_only' or 'naive_sum'"):
        EditRewardOverride(formula="qma")
    with pytest.raises(ValidationError, match="'qma', 'execution_only' or 'naive_sum'"):
        GenRewardOverride(formula="cme")
    with pytest.raises(ValidationError, match="must not both be zero"):
        GenRewardOverride(w1=0, w2=0.0)


def test_failed_scores_mask_every_dimension() -> None:
    (edit,) = failed_scores("edit", 1, "boom")
    assert (edit.execution.score, edit.execution.failure, edit.consistency.failure) == (None, "boom", "boom")
    gens = failed_scores("gen", 2, "x")
    assert len(gens) == 2 and all(g.instruction.score is None and g.quality.failure == "x" for g in gens)


def test_batcher_groups_only_same_kind_and_mode(critic: CriticScorer) -> None:
    """Queued while the worker is busy: edit/expectation x2, gen, edit/parsed; the two compatible
    edits share a batch, the others get their own."""
    delayed = Delayed(critic, delay_s=0.3)
    batcher = Batcher(lambda: delayed, max_batch=8, max_wait_s=0.05, queue_size=10)
    batcher.start()

    async def run() -> None:
        while batcher.state != "ok":
            await asyncio.sleep(0.01)
        image = Image.new("RGB", (16, 16), "red")
        edit = EditQuery(image, image, "make it red")
        first = batcher.submit("edit", "expectation", [edit])
        await asyncio.sleep(0.1)  # the worker is now inside the first batch
        jobs = [
            batcher.submit("edit", "expectation", [edit]),
            batcher.submit("gen", "expectation", [GenQuery(image, "a red square")]),
            batcher.submit("edit", "parsed", [edit]),
            batcher.submit("edit", "expectation", [edit, edit]),
        ]
        results = await asyncio.gather(first.future, *(job.future for job in jobs))
        assert [len(r) for r in results] == [1, 1, 1, 1, 2]

    try:
        asyncio.run(run())
    finally:
        batcher.stop()
    assert delayed.batches == [1, 3, 1, 1]


def test_an_underfull_batch_waits_a_fraction_of_the_measured_batch_cost(critic: CriticScorer) -> None:
    batcher = Batcher(lambda: critic, max_batch=8, max_wait_s=0.5, queue_size=10, wait_fraction=0.1)
    assert batcher.batch_wait_s() == 0.0  # nothing measured yet: no wait
    batcher.batch_seconds = 2.0
    assert batcher.batch_wait_s() == pytest.approx(0.2)
    batcher.batch_seconds = 30.0
    assert batcher.batch_wait_s() == 0.5  # the cap


def test_retry_after_is_what_is_left_of_the_expected_load(critic: CriticScorer) -> None:
    release = threading.Event()

    def load() -> CriticScorer:
        release.wait(30)
        return critic

    batcher = Batcher(load, max_batch=8, max_wait_s=0, queue_size=10, expected_load_s=40)
    batcher.start()
    try:
        assert 39 <= batcher.retry_after_s(1) <= 40
        batcher.expected_load_s = 0.5
        assert batcher.retry_after_s(3) == 3  # never less than the least
    finally:
        release.set()
        batcher.stop()


# --- over HTTP ----------------------------------------------------------------------------------------


def test_edit_scores_rewards_and_echoes(serve: Callable[..., AppServer], critic: CriticScorer) -> None:
    server = serve()
    body = {"items": [edit_item(), edit_item("add a hat")], "request_id": "group-7", "mode": "expectation"}
    response = httpx.post(f"{server.base_url}/v1/edit", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert response.headers["x-request-id"] == "group-7"
    assert (answer["request_id"], answer["wire_version"], answer["mode"]) == ("group-7", 1, "expectation")
    assert answer["critic_version"] == critic.critic_version and answer["critic_version"]
    assert answer["reward_config"] == {
        "formula": "cme",
        "w1": 0.6,
        "w2": 0.4,
        "normalisation": "minus1_over4",
    }
    assert len(answer["results"]) == 2
    for result in answer["results"]:
        execution, consistency = result["execution"]["score"], result["consistency"]["score"]
        assert 1 <= execution <= 5 and 1 <= consistency <= 5
        expected = normalised(execution) * (0.6 + 0.4 * normalised(consistency))
        assert result["execution"]["failure"] is None and result["execution"]["fallback"] is None
        assert result["reward"] == {"value": pytest.approx(expected), "masked": False, "reason": None}


def test_gen_with_reward_override_and_generated_request_id(serve: Callable[..., AppServer]) -> None:
    server = serve()
    body = {
        "items": [{"image": png("green"), "prompt": "a green square"}],
        "reward": {"formula": "naive_sum", "w1": 1, "w2": 3, "normalisation": "over5"},
    }
    answer = httpx.post(f"{server.base_url}/v1/gen", json=body, timeout=60).json()
    assert len(answer["request_id"]) == 32
    assert answer["reward_config"] == {"formula": "naive_sum", "w1": 1.0, "w2": 3.0, "normalisation": "over5"}
    (result,) = answer["results"]
    instruction, quality = result["instruction"]["score"], result["quality"]["score"]
    assert result["reward"]["value"] == pytest.approx((instruction / 5 + 3 * quality / 5) / 4)


def test_client_round_trip_matches_raw_http(serve: Callable[..., AppServer]) -> None:
    server = serve()
    with RewardClient(server.base_url) as client:
        answer = client.edit(EditRequest(items=[EditItem(**edit_item())], request_id="r1"))
        assert client.health().status == "ok"
    raw = httpx.post(f"{server.base_url}/v1/edit", json={"items": [edit_item()]}, timeout=60).json()
    assert answer.request_id == "r1"
    assert answer.results[0].model_dump() == raw["results"][0]  # same images, same deterministic critic


def test_failed_critic_answers_mask_the_reward(
    serve: Callable[..., AppServer], tiny_models: dict[str, Path]
) -> None:
    """The real tiny critic cut off at 16 new tokens cannot finish its JSON answers: each item's scores
    fail with the parse reason and its reward is null and masked (never 0), counted in /metrics."""
    short = CriticScorer.load(str(tiny_models[VL_NAME]), max_new_tokens=16)
    server = serve(lambda: short)
    response = httpx.post(f"{server.base_url}/v1/edit", json={"items": [edit_item()]}, timeout=60)
    assert response.status_code == 200
    (result,) = response.json()["results"]
    assert result["execution"]["score"] is None and result["execution"]["failure"].startswith("parse")
    reward = result["reward"]
    assert reward["value"] is None and reward["masked"] and reward["reason"].startswith("execution: parse")
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert 'firm_reward_item_failures_total{endpoint="edit"} 1.0' in metrics


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"mode": "vibes"}, 422, "parsed"),
        ({"reward": {"formula": "qma"}}, 422, "'cme', 'execution_only' or 'naive_sum'"),
        ({"reward": {"w1": -1}}, 422, "greater than or equal"),
        ({"reward": {"w1": 0, "w2": 0}}, 422, "must not both be zero"),
        ({"reward": {"w2": False}}, 422, "valid number"),
        ({"items": []}, 422, "at least 1"),
        ({"items": [edit_item(edited=png("red", (300, 300)))]}, 413, "300x300 pixels, the limit is 65536"),
        ({"items": [edit_item(colour="red")]}, 422, "Extra inputs"),
        ({"items": [edit_item()] * 65}, 422, "at most 64 items"),
    ],
)
def test_bad_requests_get_clear_4xx(
    serve: Callable[..., AppServer], change: dict[str, Any], status: int, words: str
) -> None:
    server = serve(max_image_pixels=256 * 256)
    body = {"items": [edit_item()], **change}
    response = httpx.post(f"{server.base_url}/v1/edit", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert words in response.text


@pytest.mark.parametrize(
    ("field", "data", "words"),
    [
        ("source", "%%%not-base64", "items[1].source: image is not valid base64"),
        ("edited", base64.b64encode(b"GIF89a nope").decode(), "items[1].edited: not a PNG or JPEG"),
        (
            "edited",
            base64.b64encode(base64.b64decode(png("red", (40, 40)))[:-30]).decode(),
            "does not decode",
        ),
    ],
)
def test_an_image_that_does_not_decode_masks_only_its_item(
    serve: Callable[..., AppServer], field: str, data: str, words: str
) -> None:
    server = serve()
    body = {"items": [edit_item(), edit_item(**{field: data}), edit_item("add a hat")]}
    response = httpx.post(f"{server.base_url}/v1/edit", json=body, timeout=60)
    assert response.status_code == 200, response.text
    good, bad, other = response.json()["results"]
    assert bad["reward"] == {"value": None, "masked": True, "reason": bad["reward"]["reason"]}
    assert words in bad["execution"]["failure"] and words in bad["reward"]["reason"]
    assert bad["consistency"]["score"] is None
    assert not good["reward"]["masked"] and not other["reward"]["masked"]


class OutOfRange:
    """The real critic, with the float-rounding case of an expectation over the digit 5 alone
    (5.000000000000001) written into the execution score of items whose instruction says `round`:
    forming their reward raises, and only they are masked."""

    def __init__(self, inner: CriticScorer) -> None:
        self.inner = inner
        self.critic_version = inner.critic_version

    def score_edit(self, queries: Sequence[EditQuery], mode: ScoreMode = "expectation") -> list[Any]:
        scores = self.inner.score_edit(queries, mode)
        return [
            replace(score, execution=replace(score.execution, score=5.000000000000001))
            if "round" in query.instruction
            else score
            for query, score in zip(queries, scores, strict=True)
        ]


def test_a_reward_that_cannot_be_formed_masks_only_its_item(
    serve: Callable[..., AppServer], critic: CriticScorer
) -> None:
    server = serve(lambda: OutOfRange(critic))
    body = {"items": [edit_item(), edit_item("round it"), edit_item("add a hat")]}
    response = httpx.post(f"{server.base_url}/v1/edit", json=body, timeout=60)
    assert response.status_code == 200, response.text
    good, bad, other = response.json()["results"]
    assert bad["reward"]["value"] is None and bad["reward"]["masked"]
    assert bad["reward"]["reason"].startswith("reward error: ValueError: critic score 5.000000000000001")
    assert not good["reward"]["masked"] and not other["reward"]["masked"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"items": NaN}',
        b'{"items": [], "reward": {"w1": Infinity}}',
        b'{"reward": {"w2": -Infinity}, "items": [1]}',
        b"NaN",
        b"Infinity",
        b'{"mode": NaN, "items": []}',
    ],
)
def test_non_finite_numbers_are_422(serve: Callable[..., AppServer], body: bytes) -> None:
    server = serve()
    response = httpx.post(
        f"{server.base_url}/v1/edit", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def bomb_png(width: int, height: int) -> str:
    """A valid PNG header declaring a width x height canvas, with almost no data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return base64.b64encode(raw + chunk(b"IEND", b"")).decode()


def text_bomb_png() -> str:
    """A 1x1 PNG whose compressed text chunk inflates to 8 MiB (PIL stops at 1 MiB)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "0" * 8 * 2**20, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("items", "words"),
    [
        ([{"image": bomb_png(4096, 4096), "prompt": "p"}] * 5, "request images hold 83886080 pixels"),
        ([{"image": bomb_png(30000, 30000), "prompt": "p"}], "decompression bomb"),
        ([{"image": bomb_png(5000, 4000), "prompt": "p"}], "5000x4000 pixels, the limit is 16777216"),
        ([{"image": text_bomb_png(), "prompt": "p"}], "decompression bomb"),
    ],
)
def test_pixel_and_decompression_bombs_are_413(
    serve: Callable[..., AppServer], items: list[dict[str, str]], words: str
) -> None:
    """Limits read from the headers: nothing here is decoded (5 x 4096^2 declared pixels are over the
    64 Mi request limit; 30000^2 trips PIL's own bomb guard; the text chunk PIL's inflate cap)."""
    server = serve()
    response = httpx.post(f"{server.base_url}/v1/gen", json={"items": items}, timeout=60)
    assert response.status_code == 413, response.text
    assert words in response.json()["detail"]


def test_healthz_advertises_the_limits_and_more_items_are_413(serve: Callable[..., AppServer]) -> None:
    server = serve(max_items=2, max_body_bytes=10**6)
    limits = httpx.get(f"{server.base_url}/healthz").json()["limits"]
    assert limits == {
        "max_items": 2,
        "max_body_bytes": 10**6,
        "max_image_bytes": 16 * 2**20,
        "max_image_pixels": 4096 * 4096,
        "max_request_pixels": 64 * 2**20,
    }
    response = httpx.post(f"{server.base_url}/v1/edit", json={"items": [edit_item()] * 3}, timeout=60)
    assert response.status_code == 413 and "3 items, the limit is 2" in response.json()["detail"]


def test_oversized_body_is_413_before_parsing(serve: Callable[..., AppServer]) -> None:
    server = serve(max_body_bytes=4096)
    big = {"items": [edit_item(instruction="x" * 3000, requirement="y" * 3000)]}
    response = httpx.post(f"{server.base_url}/v1/edit", json=big, timeout=60)
    assert response.status_code == 413 and "larger than 4096 bytes" in response.json()["detail"]
    chunked = httpx.post(f"{server.base_url}/v1/edit", content=iter([b"{" * 3000, b" " * 3000]), timeout=60)
    assert chunked.status_code == 413
    not_json = httpx.post(f"{server.base_url}/v1/edit", content=b"{nope", timeout=60)
    assert not_json.status_code == 422


def test_bearer_token(serve: Callable[..., AppServer], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRM_TEST_TOKEN", "s3cret")
    server = serve(token_env="FIRM_TEST_TOKEN")
    url = f"{server.base_url}/v1/edit"
    body = {"items": [edit_item()]}
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=60)
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert (
        httpx.post(url, json=body, headers={"Authorization": "Bearer s3cret"}, timeout=60).status_code == 200
    )
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200  # health stays open
    with pytest.raises(RewardServerError, match="401"), RewardClient(server.base_url, token="nope") as client:
        client.gen(ONE_GEN)
    with RewardClient(server.base_url, token="s3cret") as client:
        assert len(client.gen(ONE_GEN).results) == 1
    monkeypatch.delenv("FIRM_TEST_TOKEN")
    with pytest.raises(ValueError, match="FIRM_TEST_TOKEN is unset"):
        create_app(ServerSettings(token_env="FIRM_TEST_TOKEN"), lambda: None)


def test_no_token_is_401_before_the_body_is_read(
    serve: Callable[..., AppServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the token, malformed JSON and a body over the size limit are 401, not 422 or 413; and a
    request announcing a 60 MiB body gets its 401 after 1 KiB of it was sent: the server answered
    from the headers, without waiting for (or reading, or parsing) the body."""
    monkeypatch.setenv("FIRM_TEST_TOKEN", "s3cret")
    server = serve(token_env="FIRM_TEST_TOKEN", max_body_bytes=4096)
    url = f"{server.base_url}/v1/edit"
    assert httpx.post(url, content=b"{nope", timeout=60).status_code == 401
    assert httpx.post(url, content=b"x" * 10_000, timeout=60).status_code == 401
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        head = (
            f"POST /v1/edit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {60 * 2**20}\r\n\r\n"
        )
        connection.sendall(head.encode() + b"{" * 1024)
        answer = connection.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 401"), answer
    assert "missing or wrong bearer token" in answer
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert 'firm_reward_requests_total{endpoint="edit",status="401"} 3.0' in metrics


def test_healthz_and_503_while_the_critic_loads(tiny_models: dict[str, Path]) -> None:
    """A real load of the critic, held back by an event until the test has seen the loading state."""
    release = threading.Event()

    def load() -> CriticScorer:
        release.wait(30)
        return CriticScorer.load(str(tiny_models[VL_NAME]))

    server = AppServer(create_app(ServerSettings(expected_load_s=30), load))
    try:
        loading = httpx.get(f"{server.base_url}/healthz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert 25 <= int(loading.headers["retry-after"]) <= 30
        refused = httpx.post(f"{server.base_url}/v1/edit", json={"items": [edit_item()]})
        assert refused.status_code == 503 and 25 <= int(refused.headers["retry-after"]) <= 30
        assert "still loading" in refused.json()["detail"]
        release.set()
        health = wait_ready(server.base_url)
        assert health["status"] == "ok" and health["critic_version"]
    finally:
        release.set()
        server.close()


def test_a_critic_that_cannot_load_says_why() -> None:
    def broken() -> CriticScorer:
        raise FileNotFoundError("no critic at /nowhere")

    server = AppServer(create_app(ServerSettings(), broken))
    try:
        health = wait_ready(server.base_url, expect=503, timeout_s=10)
        assert health["status"] == "failed" and "no critic at /nowhere" in health["detail"]
        refused = httpx.post(f"{server.base_url}/v1/gen", json={"items": [{"image": png(), "prompt": "p"}]})
        assert refused.status_code == 503 and "failed to load" in refused.json()["detail"]
    finally:
        server.close()


def test_metrics_expose_the_series(serve: Callable[..., AppServer]) -> None:
    server = serve()
    httpx.post(f"{server.base_url}/v1/edit", json={"items": [edit_item(), edit_item()]}, timeout=60)
    httpx.post(f"{server.base_url}/v1/edit", json={"mode": "nope", "items": [edit_item()]}, timeout=60)
    text = httpx.get(f"{server.base_url}/metrics").text
    assert "firm_reward_queue_depth 0.0" in text
    assert 'firm_reward_batch_items_sum{endpoint="edit"} 2.0' in text
    assert 'firm_reward_batch_items_count{endpoint="edit"} 1.0' in text
    assert 'firm_reward_request_seconds_count{endpoint="edit"} 2.0' in text
    assert 'firm_reward_requests_total{endpoint="edit",status="200"} 1.0' in text
    assert 'firm_reward_requests_total{endpoint="edit",status="422"} 1.0' in text


def _concurrently(count: int, call: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * count

    def one(index: int) -> None:
        results[index] = call(index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def occupy(url: str) -> threading.Thread:
    """A one-item request that keeps the worker busy (behind a Delayed scorer) while others queue."""
    thread = threading.Thread(target=lambda: httpx.post(url, json={"items": [edit_item("hold")]}, timeout=60))
    thread.start()
    time.sleep(0.3)
    return thread


def test_requests_waiting_for_the_worker_share_a_batch(
    serve: Callable[..., AppServer], critic: CriticScorer
) -> None:
    """Four single-item requests queued while the worker scores another: when it frees, it takes all
    four in one critic batch (no wait needed); with cross-request batching off, four batches of one."""
    for cross, batches in ((True, [1, 4]), (False, [1, 1, 1, 1, 1])):
        delayed = Delayed(critic, delay_s=1.0)
        server = serve(lambda d=delayed: d, max_batch=4, cross_request_batching=cross)
        url = f"{server.base_url}/v1/edit"
        busy = occupy(url)
        responses = _concurrently(
            4, lambda i, u=url: httpx.post(u, json={"items": [edit_item()]}, timeout=60)
        )
        busy.join(60)
        assert [r.status_code for r in responses] == [200] * 4
        assert delayed.batches == batches


def test_full_queue_is_429_and_the_client_retries(
    serve: Callable[..., AppServer], critic: CriticScorer
) -> None:
    """The real critic behind a 0.4 s pause per batch, one batch of one at a time, one waiting slot."""
    delayed = Delayed(critic, delay_s=0.4)
    server = serve(lambda: delayed, max_batch=1, max_wait_ms=0, queue_size=1, retry_after_s=1)
    url = f"{server.base_url}/v1/edit"
    raw = _concurrently(3, lambda i: httpx.post(url, json={"items": [edit_item()]}, timeout=60))
    refused = [r for r in raw if r.status_code == 429]
    assert refused and all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert "queue size 1" in refused[0].json()["detail"]
    clients = [RewardClient(server.base_url, backoff_s=0.1) for _ in range(3)]
    body = EditRequest(items=[EditItem(**edit_item())])
    answers = _concurrently(3, lambda i: clients[i].edit(body))
    assert all(len(answer.results) == 1 for answer in answers)
    assert sum(client.retries for client in clients) >= 1


def test_slow_scoring_is_504(serve: Callable[..., AppServer], critic: CriticScorer) -> None:
    delayed = Delayed(critic, delay_s=1.0)
    server = serve(lambda: delayed, request_timeout_s=0.2)
    response = httpx.post(f"{server.base_url}/v1/edit", json={"items": [edit_item()]}, timeout=60)
    assert response.status_code == 504 and "not scored within 0.2 s" in response.json()["detail"]
    with pytest.raises(RewardServerError, match="504"), RewardClient(server.base_url) as client:
        client.gen(ONE_GEN)
    assert client.retries == 0  # a timeout is not retried


def test_a_failing_batch_only_fails_its_own_request(
    serve: Callable[..., AppServer], critic: CriticScorer
) -> None:
    """The real critic behind a wrapper that raises for any batch holding an `explode` instruction: the
    shared batch fails, each request is then scored alone, and only the exploding one is masked."""
    delayed = Delayed(critic, delay_s=0.5, explode="explode")
    server = serve(lambda: delayed, max_batch=8)
    url = f"{server.base_url}/v1/edit"
    busy = occupy(url)
    instructions = ["explode please", "make it blue", "add a hat"]
    responses = _concurrently(
        3, lambda i: httpx.post(url, json={"items": [edit_item(instructions[i])]}, timeout=60)
    )
    busy.join(60)
    assert [r.status_code for r in responses] == [200, 200, 200]
    bad, *good = (r.json()["results"][0] for r in responses)
    assert bad["reward"]["masked"] and bad["reward"]["value"] is None
    assert "critic blew up" in bad["execution"]["failure"] and bad["consistency"]["score"] is None
    assert all(not g["reward"]["masked"] and g["reward"]["value"] is not None for g in good)
    assert delayed.batches[:2] == [1, 3] and sorted(delayed.batches[2:]) == [1, 1, 1]


@pytest.fixture(scope="module")
def api_schema(critic: CriticScorer) -> Iterator[Any]:
    """The server's published OpenAPI schema, loaded over HTTP from a server that stays up for the
    whole schemathesis run."""
    server = AppServer(create_app(ServerSettings(max_batch=8, max_wait_ms=2), lambda: critic))
    try:
        wait_ready(server.base_url)
        yield schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    finally:
        server.close()


def test_schemathesis_finds_no_server_errors(api_schema: Any) -> None:
    """Generated requests for every published operation (20 each) pass every default check:
    responses conform to the schema, none is a 5xx, and schema-valid data is accepted (an image
    string that is base64 but no PNG masks its item, it does not refuse the request)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} == {"/v1/edit", "/v1/gen", "/healthz", "/metrics"}
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call_and_validate()
            calls.append(response.status_code)
            assert response.status_code < 500, response.text

        check()
    assert len(calls) >= 40 and 200 in calls
