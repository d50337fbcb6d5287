"""Regex-guided decoding on the tiny random models, which write garbage when left alone: with a regex every
answer matches it in full (so JSON parses), for image and text-only requests, greedy and sampled; the
processor's rules one by one on hand-made scores; and nothing changes without a regex."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import regex
import torch
from PIL import Image

from resources.chat import ChatRequest, Decoding, ImagePart
from resources.guided import RegexLogitsProcessor, TokenTable
from resources.tiny_models import VL_NAME
from resources.transformers_backend import TransformersBackend

JUDGE = r'\{"reasoning": "[a-z ]{0,20}", "score": [1-5]\}'  # at most 49 characters
ITEM = r'"[a-z]{1,8}"'
CHECKLIST = rf"\{{\"items\": \[{ITEM}(, {ITEM}){{0,2}}\]\}}"  # at most 47 characters
GUIDED = Decoding(max_new_tokens=64, regex=JUDGE)


@pytest.fixture(scope="module")
def vl(tiny_models: dict[str, Path]) -> TransformersBackend:
    return TransformersBackend(str(tiny_models[VL_NAME]), batch_size=4)


@pytest.fixture(scope="module")
def requests(tmp_path_factory: pytest.TempPathFactory) -> list[ChatRequest]:
    """Six requests, with and without images; with batch_size=4 they span two chunks."""
    folder = tmp_path_factory.mktemp("images")
    images = []
    for index, (mode, size, color) in enumerate([("RGB", (64, 64), "red"), ("L", (48, 90), 128)]):
        path = folder / f"{index}.png"
        Image.new(mode, size, color).save(path)
        images.append(ImagePart(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    return [
        ChatRequest(user=(images[0], "Rate the edit from 1 to 5."), system="You are a judge."),
        ChatRequest(user=("Describe a red car.",)),
        ChatRequest(user=("Before:", images[0], "After:", images[1], "Compare.")),
        ChatRequest(user=("Rate this caption: a cat on a sofa.",), system="Answer in JSON."),
        ChatRequest(user=(images[1], "What is this?")),
        ChatRequest(user=("Plan three edits.",)),
    ]


def assert_judged(answers: list[str]) -> None:
    """Every answer matches the judge regex in full and parses as JSON with a score in 1..5."""
    for answer in answers:
        assert regex.fullmatch(JUDGE, answer), answer
        parsed = json.loads(answer)
        assert set(parsed) == {"reasoning", "score"}
        assert parsed["score"] in range(1, 6)


def test_greedy_answers_match_and_parse(vl: TransformersBackend, requests: list[ChatRequest]) -> None:
    answers = vl.generate(requests, GUIDED)
    assert len(answers) == len(requests)
    assert_judged(answers)
    assert vl.generate(requests, GUIDED) == answers
    # Batching does not change a row's answer (left padding, per-row state).
    assert [vl.generate([request], GUIDED)[0] for request in requests[:3]] == answers[:3]


def test_text_model(tiny_text_backend: TransformersBackend, requests: list[ChatRequest]) -> None:
    text_only = [request for request in requests if not request.images]
    answers = tiny_text_backend.generate(text_only, GUIDED)
    assert_judged(answers)
    assert tiny_text_backend.generate(text_only, GUIDED) == answers


def test_sampling_is_valid_and_seeded(vl: TransformersBackend, requests: list[ChatRequest]) -> None:
    sampled = [
        vl.generate(
            requests, Decoding(max_new_tokens=64, temperature=1.0, top_p=0.95, seed=seed, regex=JUDGE)
        )
        for seed in (1, 2)
    ]
    for answers in sampled:
        assert_judged(answers)
    assert sampled[0] != sampled[1]
    again = Decoding(max_new_tokens=64, temperature=1.0, top_p=0.95, seed=1, regex=JUDGE)
    assert vl.generate(requests, again) == sampled[0]


def test_repeated_group(
    vl: TransformersBackend, tiny_text_backend: TransformersBackend, requests: list[ChatRequest]
) -> None:
    for backend, batch in ((vl, requests), (tiny_text_backend, [r for r in requests if not r.images])):
        for decoding in (
            Decoding(max_new_tokens=64, regex=CHECKLIST),
            Decoding(max_new_tokens=64, temperature=1.0, seed=5, regex=CHECKLIST),
        ):
            for answer in backend.generate(batch, decoding):
                assert regex.fullmatch(CHECKLIST, answer), answer
                items = json.loads(answer)["items"]
                assert 1 <= len(items) <= 3 and all(regex.fullmatch("[a-z]{1,8}", item) for item in items)


def test_short_budget_gives_a_valid_prefix(vl: TransformersBackend, requests: list[ChatRequest]) -> None:
    """max_new_tokens below the regex's length cuts the answer: a prefix of a match, not a match."""
    for answer in vl.generate(requests[:2], Decoding(max_new_tokens=6, regex=JUDGE)):
        assert regex.fullmatch(JUDGE, answer, partial=True) and not regex.fullmatch(JUDGE, answer)


def test_without_regex_nothing_changes(vl: TransformersBackend, requests: list[ChatRequest]) -> None:
    """Plain generation is still net.generate() with no extra processor, stripped; and on these models
    it does not happen to match the regex, so the constraint above is doing the work."""
    plain = Decoding(max_new_tokens=24)
    answers = vl.generate(requests[:4], plain)
    inputs = vl._encode(requests[:4], [vl._render(request) for request in requests[:4]])
    with torch.inference_mode():
        torch.manual_seed(plain.seed)
        output = vl.net.generate(**inputs, generation_config=vl._generation_config(plain))
    reference = vl.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answers == [answer.strip() for answer in reference]
    assert not any(regex.fullmatch(JUDGE, answer) for answer in answers)


# The processor's rules on hand-made scores, with the tiny tokenizer (every ASCII character is a token).


@pytest.fixture(scope="module")
def table(vl: TransformersBackend) -> TokenTable:
    return TokenTable(vl.tokenizer, vl._eos_token_ids())


def token(table: TokenTable, piece: str) -> int:
    return table.texts.index(piece)


def step(
    table: TokenTable, pattern: str, generated: list[int], ranked: list[int], sample: bool = False
) -> torch.Tensor:
    """Scores after one processor step for one row whose answer so far is `generated`, where the model
    ranks `ranked` first (in that order) and everything else below."""
    prompt = [7, 7]
    scores = torch.zeros(1, len(table.texts))
    for rank, token_id in enumerate(ranked):
        scores[0, token_id] = 100.0 - rank
    processor = RegexLogitsProcessor(pattern, table, len(prompt), sample=sample)
    return processor(torch.tensor([prompt + generated]), scores)[0]


def finite(scores: torch.Tensor) -> set[int]:
    return set(torch.isfinite(scores).nonzero().flatten().tolist())


def test_greedy_takes_the_best_allowed_token(table: TokenTable) -> None:
    x, n, y = token(table, "x"), token(table, "n"), token(table, "y")
    assert finite(step(table, "(yes|no)", [], [x, n, y])) == {n}


def test_sampling_keeps_the_allowed_among_the_top(table: TokenTable) -> None:
    x, n, y = token(table, "x"), token(table, "n"), token(table, "y")
    out = step(table, "(yes|no)", [], [x, n, y], sample=True)
    assert finite(out) == {n, y}
    assert out[n] == 99.0 and out[y] == 98.0  # kept as they were, for temperature and top_p to act on


def test_low_ranked_allowed_token_is_found(table: TokenTable) -> None:
    """Nothing allowed among the top 64: the best allowed token of the whole vocabulary."""
    banned = [i for i, piece in enumerate(table.texts) if piece and not piece.startswith("q")][:100]
    q = token(table, "q")
    for sample in (False, True):
        assert finite(step(table, "q+", [], banned, sample=sample)) == {q}


def test_eos_only_on_a_full_match(table: TokenTable) -> None:
    a, eos = token(table, "a"), sorted(table.eos)
    # "" is not a match of a+: EOS is not allowed even when ranked first.
    assert finite(step(table, "a+", [], [*eos, a])) == {a}
    # "a" matches and may go on: whichever the model prefers.
    assert finite(step(table, "a+", [a], [eos[0], a])) == {eos[0]}
    assert finite(step(table, "a+", [a], [a, eos[0]])) == {a}


def test_full_match_that_cannot_grow_allows_only_eos(table: TokenTable) -> None:
    n, o = token(table, "n"), token(table, "o")
    ranked = [token(table, piece) for piece in "xyzno "]
    for sample in (False, True):
        assert finite(step(table, "(yes|no)", [n, o], ranked, sample=sample)) <= table.eos
        assert finite(step(table, "(yes|no)", [n, o], ranked, sample=sample))


def test_finished_rows_are_left_alone(table: TokenTable) -> None:
    eos = sorted(table.eos)
    scores = torch.randn(2, len(table.texts))
    processor = RegexLogitsProcessor("a+", table, 1, sample=False)
    a = token(table, "a")
    ids = torch.tensor([[7, a, eos[0], eos[-1]], [7, a, a, a]])
    out = processor(ids, scores.clone())
    assert torch.equal(out[0], scores[0])
    assert len(finite(out[1])) == 1


def test_dead_end_ends_the_answer(table: TokenTable) -> None:
    """A character no whole token spells cannot be produced: the row is ended (and a warning logged)."""
    processor = RegexLogitsProcessor("é", table, 1, sample=False)
    out = processor(torch.tensor([[7]]), torch.randn(1, len(table.texts)))[0]
    assert finite(out) and finite(out) <= table.eos
    assert processor.dead_ends == 1


class _SentencePieceLike:
    """A tokenizer whose single-token decodes drop the word-start space, like SentencePiece's."""

    def __init__(self) -> None:
        self.all_special_ids: list[int] = []
        self.added_tokens_decoder: dict[int, Any] = {}
        self.pieces = ["▁a", "b", "▁c"]

    def __len__(self) -> int:
        return len(self.pieces)

    def batch_decode(self, ids: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.pieces[i] for i in ids).replace("▁", " ").lstrip()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [0, 1, 2]


def test_tokens_that_do_not_concatenate_are_refused() -> None:
    with pytest.raises(ValueError, match="do not concatenate"):
        TokenTable(_SentencePieceLike(), [0])
    with pytest.raises(ValueError, match="end-of-sequence"):
        TokenTable(_SentencePieceLike(), [])
