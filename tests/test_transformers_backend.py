"""TransformersBackend on the tiny offline models: batching, determinism, probabilities, lineage."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.chat import ChatRequest, Decoding, ImagePart
from resources.tiny_models import TEXT_NAME, VL_NAME
from resources.transformers_backend import TransformersBackend, weights_revision

DIGITS = list("12345")
GREEDY = Decoding(max_new_tokens=12)


@pytest.fixture(scope="module")
def vl(tiny_models: dict[str, Path]) -> TransformersBackend:
    return TransformersBackend(str(tiny_models[VL_NAME]), batch_size=3)


@pytest.fixture(scope="module")
def text(tiny_models: dict[str, Path]) -> TransformersBackend:
    return TransformersBackend(str(tiny_models[TEXT_NAME]))


@pytest.fixture(scope="module")
def requests(images: list[ImagePart]) -> list[ChatRequest]:
    """Four requests with one, two and no images; with batch_size=3 they span two chunks."""
    return [
        ChatRequest(user=(images[0], "Rate the edit from 1 to 5."), system="You are a judge."),
        ChatRequest(user=("Before:", images[1], "After:", images[2], "Compare.")),
        ChatRequest(user=("Describe a red car.",)),
        ChatRequest(user=(images[2], "What is this?")),
    ]


def test_model_ref_revision_is_a_stable_weights_hash(tiny_models: dict[str, Path]) -> None:
    path = str(tiny_models[TEXT_NAME])
    first, second = TransformersBackend(path), TransformersBackend(path)
    assert first.model == second.model
    assert first.model.model_id == path
    assert first.model.revision == weights_revision(path)
    assert len(first.model.revision) == 16
    int(first.model.revision, 16)
    assert TransformersBackend(path, revision="v1").model.revision == "v1"


def test_generate_mixed_batch_is_deterministic(vl: TransformersBackend, requests: list[ChatRequest]) -> None:
    answers = vl.generate(requests, GREEDY)
    assert len(answers) == len(requests)
    assert all(isinstance(answer, str) and answer == answer.strip() for answer in answers)
    assert vl.generate(requests, GREEDY) == answers
    assert "<|im_end|>" not in "".join(answers)


def test_sampling_repeats_per_seed(vl: TransformersBackend, requests: list[ChatRequest]) -> None:
    sampled = Decoding(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=7)
    answers = vl.generate(requests, sampled)
    assert vl.generate(requests, sampled) == answers
    other_seed = Decoding(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=8)
    assert vl.generate(requests, other_seed) != answers


def test_next_token_probs_are_probabilities(vl: TransformersBackend, requests: list[ChatRequest]) -> None:
    prefixes = ["Score: ", "", "The answer is", "Score:"]
    probs = vl.next_token_probs(requests, prefixes, DIGITS)
    assert len(probs) == len(requests)
    for row in probs:
        assert list(row) == DIGITS
        assert all(value > 0 for value in row.values())
        assert sum(row.values()) <= 1
    assert vl.next_token_probs(requests, prefixes, DIGITS) == probs
    assert probs[0] != probs[3]  # the trailing space of the prefix is kept


def test_batched_probs_match_single_requests(vl: TransformersBackend, requests: list[ChatRequest]) -> None:
    """Left padding must not move any row's answer: batched equals one-by-one."""
    prefixes = ["Score: "] * len(requests)
    batched = vl.next_token_probs(requests, prefixes, DIGITS)
    for request, row in zip(requests, batched, strict=True):
        single = vl.next_token_probs([request], ["Score: "], DIGITS)[0]
        assert single == pytest.approx(row, rel=1e-4)


def test_multi_token_strings_are_rejected(vl: TransformersBackend, requests: list[ChatRequest]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        vl.next_token_probs(requests[:1], ["Score: "], ["12"])


def test_text_model_generates_and_scores(text: TransformersBackend) -> None:
    request = ChatRequest(user=("Plan three editing prompts.",), system="You plan datasets.")
    answers = text.generate([request, request], GREEDY)
    assert answers[0] == answers[1]
    (probs,) = text.next_token_probs([request], ["Count: "], DIGITS)
    assert 0 < sum(probs.values()) <= 1


def test_text_model_rejects_images(text: TransformersBackend, requests: list[ChatRequest]) -> None:
    with pytest.raises(ValueError, match="text-only"):
        text.generate(requests[:1], GREEDY)
    with pytest.raises(ValueError, match="text-only"):
        text.next_token_probs(requests[:1], [""], DIGITS)
