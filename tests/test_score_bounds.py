"""No score outside 1..5 is stored, served or rewarded: the expectation score is clamped where it is
formed (property-tested over random, one-hot, subnormal and top-k-truncated digit probabilities), and
a judge whose top-k logprobs list only "5" — where 5 * p / p is 5.000000000000001 — is stored as 5 by
a curation stage and answered 200 with scores and rewards by `firm serve`, over real HTTP."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loopback import AppServer, LoopbackServer, completion, wait_ready
from PIL import Image

from firm_assets.critics.rewards import normalise
from firm_assets.critics.scoring import EXECUTION, CriticScorer, read_score
from firm_assets.curation.expectation import SCORE_TOKENS, expected_digit
from firm_assets.curation.parsers import EXECUTION_JSON
from firm_assets.curation.prompts import load_template
from firm_assets.curation.stage import ChatStage, StageInput, run_chat_stage
from firm_assets.serving.app import create_app
from firm_assets.serving.settings import ServerSettings
from firm_assets.serving.wire import encode_image
from resources.chat import Decoding, ImagePart, ProbedAnswer, TokenProbs
from resources.openai_backend import OpenAIBackend
from warehouse.connection import Warehouse

# exp(ONE_HOT_LOGPROB) = p with 5 * p / p == 5.000000000000001 in floating point (found by search)
ONE_HOT_LOGPROB = -3.649158741300643
ANSWER_HEAD = '{"reasoning": "the cup is blue", "score": '


def test_the_one_hot_case_overflows_without_the_clamp() -> None:
    p = math.exp(ONE_HOT_LOGPROB)
    assert 5 * p / p > 5  # the float fact the clamp exists for
    assert expected_digit({"5": p, "1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0}) == 5.0


def test_hand_computed_expectations() -> None:
    assert expected_digit({"3": 0.5, "4": 0.5}) == pytest.approx(3.5)
    assert expected_digit({"1": 0.1, "5": 0.1}) == pytest.approx(3.0)
    assert expected_digit({"1": 5e-324}) == 1.0  # subnormal mass alone still reads as its digit
    assert expected_digit(dict.fromkeys(SCORE_TOKENS, 0.0)) is None
    assert expected_digit({"5": float("nan"), "2": 1.0}) == 2.0  # a NaN carries no probability
    assert expected_digit({"6": 1.0}) is None  # not a score digit


probability = st.one_of(
    st.floats(min_value=0.0, max_value=1.0, allow_subnormal=True),
    st.sampled_from([0.0, 5e-324, 2.2250738585072014e-308, 1e-300, 1.0, math.exp(ONE_HOT_LOGPROB)]),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(SCORE_TOKENS), probability, min_size=1, max_size=5))
def test_expectation_never_leaves_one_to_five(probs: dict[str, float]) -> None:
    """Any subset of digits (a top-k list drops the rest), any probabilities, subnormal included."""
    expected = expected_digit(probs)
    if any(p > 0 for p in probs.values()):
        assert expected is not None and 1.0 <= expected <= 5.0
        normalise(expected, "minus1_over4")  # the RL reward accepts it
    else:
        assert expected is None


def test_seeded_top_k_and_one_hot_vectors_stay_in_range() -> None:
    """The same property without hypothesis: 20,000 seeded draws of one-hot, top-1..top-4 truncated
    and softmax vectors (the shapes the OpenAI-compatible and vLLM backends hand back)."""
    rng = random.Random(18)
    overflowed_before_clamp = 0
    for _ in range(20_000):
        logits = [rng.gauss(0, 4) for _ in SCORE_TOKENS]
        total = sum(math.exp(x) for x in logits)
        probs = {token: math.exp(x) / total for token, x in zip(SCORE_TOKENS, logits, strict=True)}
        keep = sorted(probs, key=probs.get, reverse=True)[: rng.randint(1, 5)]
        truncated = {token: (probs[token] if token in keep else 0.0) for token in SCORE_TOKENS}
        if len(keep) == 1:
            digit = int(keep[0])
            overflowed_before_clamp += digit * truncated[keep[0]] / truncated[keep[0]] != digit
        expected = expected_digit(truncated)
        assert expected is not None and 1.0 <= expected <= 5.0
    assert overflowed_before_clamp > 0  # the draws do include the float cases the clamp catches


def test_read_score_clamps_the_one_hot_five() -> None:
    text = ANSWER_HEAD + "5}"
    probs = {token: (math.exp(ONE_HOT_LOGPROB) if token == "5" else 0.0) for token in SCORE_TOKENS}
    answer = ProbedAnswer(text, (TokenProbs(len(ANSWER_HEAD), probs),))
    score = read_score(EXECUTION, answer, "", "expectation")
    assert score.score == 5.0 and score.failure is None and score.fallback is None


def one_hot_completion(payload: dict[str, Any]) -> dict[str, Any]:
    """A judge answer whose logprobs list only "5" at the score digit (top-k truncated), or, for a
    one-token continuation request, only "5" as the next token."""
    five = {"token": "5", "logprob": ONE_HOT_LOGPROB, "bytes": None}
    if payload.get("max_tokens") == 1:
        return completion("5", {"content": [{**five, "top_logprobs": [five]}]})
    tokens = [ANSWER_HEAD, "5", "}"]
    content = [
        {"token": token, "logprob": 0.0, "bytes": None, "top_logprobs": []}
        if token != "5"
        else {**five, "top_logprobs": [five]}
        for token in tokens
    ]
    return completion("".join(tokens), {"content": content})


@pytest.fixture
def one_hot_judge() -> Iterator[LoopbackServer]:
    server = LoopbackServer(lambda payload: (200, {}, one_hot_completion(payload)))
    yield server
    server.close()


def test_a_stage_stores_the_one_hot_five_as_five(
    one_hot_judge: LoopbackServer, images: list[ImagePart], tmp_path: Path
) -> None:
    """The curation stage's expectation reader (what the bench and the edit scores store)."""
    stage = ChatStage(
        "execution",
        load_template("execution_score"),
        EXECUTION_JSON,
        Decoding(max_new_tokens=64),
        score_reader="expectation",
    )
    variables = {"instruction": "Make it blue.", "requirement": "none", "difference_caption": "Blue now."}
    inputs = [StageInput("one-hot", variables, {"source": images[0], "edited": images[1]})]
    backend = OpenAIBackend(one_hot_judge.base_url, "one-hot-judge", revision="r1")
    results, _ = run_chat_stage(stage, backend, inputs, Warehouse(tmp_path / "w.duckdb"), batch_size=1)
    parsed = results["one-hot"].outcome.parsed
    assert parsed["score"] == 5.0 and parsed["text_score"] == 5


def test_serve_answers_200_with_scores_for_a_one_hot_item(one_hot_judge: LoopbackServer) -> None:
    """`firm serve` in front of the judge: the request whose items all hit the float case answers 200,
    with execution and consistency 5.0 and the full CME reward 1.0 (before the clamp: a 500)."""
    scorer = CriticScorer(OpenAIBackend(one_hot_judge.base_url, "one-hot-judge", revision="r1"), "one-hot")
    server = AppServer(create_app(ServerSettings(), lambda: scorer))
    try:
        wait_ready(server.base_url)
        picture = encode_image(Image.new("RGB", (32, 32), "red"))
        item = {"source": picture, "edited": picture, "instruction": "make it blue"}
        body = {"items": [item, {**item, "instruction": "add a hat"}], "mode": "expectation"}
        response = httpx.post(f"{server.base_url}/v1/edit", json=body, timeout=60)
    finally:
        server.close()
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        assert result["execution"]["score"] == 5.0 and result["consistency"]["score"] == 5.0
        assert result["execution"]["fallback"] is None
        assert result["reward"] == {"value": 1.0, "masked": False, "reason": None}
