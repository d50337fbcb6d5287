"""TransformersBackend on the tiny offline models: batching, determinism, probabilities, lineage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from resources.chat import ChatRequest, Decoding, ImagePart
from resources.tiny_models import TEXT_NAME, VL_NAME
from resources.transformers_backend import TransformersBackend
from resources.weights import weights_identity

DIGITS = list("12345")
GREEDY = Decoding(max_new_tokens=12)


@pytest.fixture(scope="module")
def vl(tiny_models: dict[str, Path]) -> TransformersBackend:
    return TransformersBackend(str(tiny_models[VL_NAME]), batch_size=3)


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
    assert first.model.revision == weights_identity(path)
    assert len(first.model.revision) == 16
    int(first.model.revision, 16)
    # A local folder has no branches: a branch name does not change what is loaded or recorded.
    assert TransformersBackend(path, revision="v1").model.revision == first.model.revision


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


def test_text_model_generates_and_scores(tiny_text_backend: TransformersBackend) -> None:
    request = ChatRequest(user=("Plan three editing prompts.",), system="You plan datasets.")
    answers = tiny_text_backend.generate([request, request], GREEDY)
    assert answers[0] == answers[1]
    (probs,) = tiny_text_backend.next_token_probs([request], ["Count: "], DIGITS)
    assert 0 < sum(probs.values()) <= 1


def test_text_model_rejects_images(
    tiny_text_backend: TransformersBackend, requests: list[ChatRequest]
) -> None:
    with pytest.raises(ValueError, match="text-only"):
        tiny_text_backend.generate(requests[:1], GREEDY)
    with pytest.raises(ValueError, match="text-only"):
        tiny_text_backend.next_token_probs(requests[:1], [""], DIGITS)


JUDGE = Decoding(max_new_tokens=48, regex=r'\{"reasoning": "[a-z ]{0,20}", "score": [1-5]\}')


def test_in_memory_images_answer_as_their_files_do(
    vl: TransformersBackend, requests: list[ChatRequest]
) -> None:
    """An ImagePart holding the decoded image gives the same answers and probabilities as its file."""

    def in_memory(request: ChatRequest) -> ChatRequest:
        parts = tuple(
            ImagePart.from_image(Image.open(part.path)) if isinstance(part, ImagePart) and part.path else part
            for part in request.user
        )
        return ChatRequest(user=parts, system=request.system)

    memory = [in_memory(request) for request in requests]
    assert all(part.path is None for request in memory for part in request.images)
    assert vl.generate(memory, GREEDY) == vl.generate(requests, GREEDY)
    from_memory = vl.next_token_probs(memory, ["Score: "] * 4, DIGITS)
    from_files = vl.next_token_probs(requests, ["Score: "] * 4, DIGITS)
    for row, expected in zip(from_memory, from_files, strict=True):
        assert row == pytest.approx(expected)


def test_generate_probed_answers_as_generate_does(
    vl: TransformersBackend, requests: list[ChatRequest]
) -> None:
    probed = vl.generate_probed(requests, JUDGE, DIGITS)
    assert [answer.text for answer in probed] == vl.generate(requests, JUDGE)
    for answer in probed:
        assert answer.positions, "every guided answer writes its score digit"
        for position in answer.positions:
            assert answer.text[position.offset] in DIGITS
            assert list(position.probs) == DIGITS
            assert 0 < sum(position.probs.values()) <= 1


def test_generate_probed_reads_the_distribution_the_digit_was_drawn_from(
    vl: TransformersBackend, requests: list[ChatRequest]
) -> None:
    """The recorded probabilities equal a teacher-forced forward pass over the prompt and the tokens
    actually generated before the digit (not a re-tokenisation of the answer's text)."""
    request = requests[0]
    (answer,) = vl.generate_probed([request], JUDGE, DIGITS)
    generated = vl._generate_chunk([request], JUDGE, None)[0].tolist()
    digit_ids = [vl.tokenizer.encode(digit, add_special_tokens=False)[0] for digit in DIGITS]
    steps = [step for step, token in enumerate(generated) if token in digit_ids]
    assert len(steps) == len(answer.positions) >= 1
    for step, position in zip(steps, answer.positions, strict=True):
        inputs = vl._encode([request], [vl._render(request)])
        length = inputs["input_ids"].shape[1]
        for key, value in inputs.items():  # every per-token row grows by the generated tokens
            if key != "input_ids" and value.dim() == 2 and value.shape[1] == length:
                fill = 1 if key == "attention_mask" else 0
                inputs[key] = torch.cat([value, torch.full((1, step), fill, dtype=value.dtype)], dim=1)
        prefix = torch.tensor([generated[:step]], dtype=inputs["input_ids"].dtype)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], prefix], dim=1)
        with torch.inference_mode():
            logits = vl.net(**inputs).logits[0, -1].float()
        forced = torch.softmax(logits, dim=-1)[digit_ids].tolist()
        assert list(position.probs.values()) == pytest.approx(forced, rel=1e-3)
