"""CriticScorer (critic inference for serving) on the tiny critic: in-memory images, per-item failures,
the one-pass expectation score against the two-pass reading, the requirement in the prompt, the gen
quality task, loading from a local folder and from a real MLflow registry; and the pure readers."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from firm_assets.critics.scoring import (
    CONSISTENCY,
    EXECUTION,
    INSTRUCTION,
    QUALITY,
    CriticScorer,
    DimensionScore,
    EditQuery,
    GenQuery,
    expected_digit,
    read_score,
    resolve_critic,
    score_offsets,
)
from firm_assets.curation.parsers import prompt_text
from firm_assets.curation.prompts import load_template
from firm_assets.curation.stage import SCORE_TOKENS
from resources.chat import ChatRequest, Decoding, ImagePart, InputImageError, ProbedAnswer, TokenProbs
from resources.tiny_models import VL_NAME
from resources.transformers_backend import TransformersBackend

MAX_NEW_TOKENS = 64


class RecordingBackend(TransformersBackend):
    """The real tiny critic, keeping the requests of each batch it is asked (to see prompts and batching)."""

    def __init__(self, model_path: str) -> None:
        super().__init__(model_path, batch_size=16)
        self.batches: list[list[ChatRequest]] = []

    def generate(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str]:
        self.batches.append(list(requests))
        return super().generate(requests, decoding)

    def generate_probed(
        self, requests: Sequence[ChatRequest], decoding: Decoding, tokens: Sequence[str]
    ) -> list[ProbedAnswer]:
        self.batches.append(list(requests))
        return super().generate_probed(requests, decoding, tokens)


@pytest.fixture(scope="module")
def backend(tiny_models: dict[str, Path]) -> RecordingBackend:
    return RecordingBackend(str(tiny_models[VL_NAME]))


@pytest.fixture
def scorer(backend: RecordingBackend) -> CriticScorer:
    backend.batches.clear()
    return CriticScorer(backend, "tiny@test", max_new_tokens=MAX_NEW_TOKENS)


def picture(color: str, size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, color)


def truncated_png(tmp_path: Path) -> Image.Image:
    """A PNG cut in half: Image.open succeeds (lazily), decoding the pixels fails."""
    buffer = io.BytesIO()
    picture("green").save(buffer, format="PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return Image.open(path)


def in_range(score: DimensionScore) -> bool:
    return score.failure is None and score.score is not None and 1.0 <= score.score <= 5.0


def test_a_corrupt_image_fails_only_its_own_item(scorer: CriticScorer, tmp_path: Path) -> None:
    queries = [
        EditQuery(picture("red"), picture("blue", (64, 48)), "make it blue"),
        EditQuery(picture("red"), truncated_png(tmp_path), "make it green"),
        EditQuery(picture("white"), picture("black", (48, 64)), "make it dark", "keep the frame"),
    ]
    first, bad, third = scorer.score_edit(queries)
    for scores in (first, third):
        assert in_range(scores.execution) and in_range(scores.consistency)
        assert scores.execution.fallback is None and scores.consistency.fallback is None
    for dimension in (bad.execution, bad.consistency):
        assert dimension.score is None
        assert dimension.failure is not None and "image file is truncated" in dimension.failure
    # the two good queries' four questions went to the critic in one batch; the bad one never did
    assert [len(batch) for batch in scorer.backend.batches] == [4]  # type: ignore[attr-defined]


def test_an_image_the_processor_refuses_fails_only_its_own_item(scorer: CriticScorer) -> None:
    """A 1x400 image decodes but the Qwen processor refuses its aspect ratio: the whole batch fails,
    then each request is asked alone, so only that query fails."""
    queries = [
        EditQuery(picture("red"), picture("blue"), "make it blue"),
        EditQuery(picture("red"), picture("blue", (1, 400)), "make it a line"),
    ]
    good, odd = scorer.score_edit(queries)
    assert in_range(good.execution) and in_range(good.consistency)
    assert odd.execution.score is None and "aspect ratio" in (odd.execution.failure or "")
    assert odd.consistency.score is None and "aspect ratio" in (odd.consistency.failure or "")


def test_an_empty_image_is_a_failure_with_a_reason(scorer: CriticScorer) -> None:
    (scores,) = scorer.score_gen([GenQuery(Image.new("RGB", (0, 0)), "nothing")])
    assert scores.instruction.score is None and "empty (0x0)" in (scores.instruction.failure or "")
    assert scores.quality.score is None and "empty (0x0)" in (scores.quality.failure or "")


def test_requirement_reaches_the_prompt_and_none_when_absent(scorer: CriticScorer) -> None:
    queries = [
        EditQuery(picture("red"), picture("blue"), "make it blue", "keep the red border"),
        EditQuery(picture("red"), picture("blue"), "make it blue"),
    ]
    scorer.score_edit(queries, mode="parsed")
    (batch,) = scorer.backend.batches  # type: ignore[attr-defined]
    texts = [prompt_text(request) for request in batch]
    assert len(texts) == 4  # execution and consistency of both queries
    fenced = "<requirement>\n{}\n</requirement>"
    assert all(fenced.format("keep the red border") in text for text in texts[:2])
    assert all(fenced.format("none") in text for text in texts[2:])
    assert "Was the requested change carried out?" in texts[0]
    assert "Did anything change that the instruction did not ask for?" in texts[1]


def test_parsed_mode_returns_the_digits(scorer: CriticScorer) -> None:
    (edit,) = scorer.score_edit([EditQuery(picture("red"), picture("blue"), "make it blue")], mode="parsed")
    (gen,) = scorer.score_gen([GenQuery(picture("red"), "a red square")], mode="parsed")
    for score in (edit.execution, edit.consistency, gen.instruction, gen.quality):
        assert in_range(score) and score.score is not None and score.score.is_integer()


def test_gen_scores_instruction_and_quality(scorer: CriticScorer) -> None:
    queries = [GenQuery(picture("red"), "a red square"), GenQuery(picture("blue", (80, 40)), "a blue banner")]
    results = scorer.score_gen(queries)
    assert len(results) == 2
    for scores in results:
        assert in_range(scores.instruction) and in_range(scores.quality)
    # guided: the plan-then-score and quality formats are asked as two batches, each with both queries
    assert [len(batch) for batch in scorer.backend.batches] == [2, 2]  # type: ignore[attr-defined]


def test_one_pass_expectation_equals_the_two_pass_reading(scorer: CriticScorer) -> None:
    """The score the scorer reads in the generating pass equals next_token_probs after the answer's own
    text up to the digit. Checked on the plan-then-score answer, whose text the tiny critic writes in the
    tokens that re-encoding gives back; the random guided critic writes its JSON answers in other token
    splits, and then the two readings rightly differ (the one-pass one is conditioned on the tokens
    actually written; test_transformers_backend checks that reading against a teacher-forced pass)."""
    queries = [GenQuery(picture("red"), "a red square"), GenQuery(picture("green", (40, 80)), "a tall tree")]
    scores = scorer.score_gen(queries)
    backend = scorer.backend
    for query, result in zip(queries, scores, strict=True):
        template = load_template(INSTRUCTION.task.template_id)
        request = template.render({"prompt": query.prompt}, {"image": ImagePart.from_image(query.image)})
        (answer,) = backend.generate_probed([request], scorer.decoding(INSTRUCTION), SCORE_TOKENS)
        parsed = INSTRUCTION.task.parser.parse(answer.text, prompt_text(request))
        (offset,) = score_offsets(answer.text, INSTRUCTION.digit_patterns, [parsed["score"]]) or [None]
        assert offset is not None
        (two_pass,) = backend.next_token_probs([request], [answer.text[:offset]], SCORE_TOKENS)
        expected = expected_digit(two_pass)
        assert expected is not None and 1.0 <= expected <= 5.0
        assert result.instruction.score == pytest.approx(expected, abs=1e-5)


def test_bad_mode_is_refused(scorer: CriticScorer) -> None:
    with pytest.raises(ValueError, match="score mode"):
        scorer.score_gen([GenQuery(picture("red"), "x")], mode="mean")  # type: ignore[arg-type]


# --- loading ------------------------------------------------------------------------------------------


def test_load_from_a_local_folder(tiny_models: dict[str, Path]) -> None:
    folder = tiny_models[VL_NAME]
    scorer = CriticScorer.load(str(folder), max_new_tokens=MAX_NEW_TOKENS)
    path, revision = scorer.critic_version.rsplit("@", 1)
    assert path == str(folder.resolve()) and len(revision) == 16
    (scores,) = scorer.score_edit([EditQuery(picture("red"), picture("blue"), "make it blue")])
    assert in_range(scores.execution)


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        resolve_critic(str(tmp_path))
    with pytest.raises(ValueError, match="models:/<name>/<version>"):
        resolve_critic("models:/only-a-name", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def test_load_from_the_mlflow_registry(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registered as the critic asset registers it (an mlflow.transformers pipeline in a local SQLite
    store), loaded back by URI: same critic, same scores as the folder it came from."""
    from firm_assets.critics.launch import critic_pipeline, pip_requirements
    from resources.tracking import TrackingResource

    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = str(tiny_models[VL_NAME])
    tracking = TrackingResource()
    run_id = tracking.create_run("firm-critics", "tiny", {})
    version = tracking.register_transformers_model(
        run_id,
        "firm-edit-critic",
        lambda: critic_pipeline(folder),
        {"critic_version": "v1"},
        unique_tag="critic_version",
        pip_requirements=pip_requirements(),
    )
    tracking.finish(run_id)
    uri = f"models:/firm-edit-critic/{version}"

    registered = CriticScorer.load(uri, max_new_tokens=MAX_NEW_TOKENS)
    assert registered.critic_version == uri
    local = CriticScorer.load(folder, max_new_tokens=MAX_NEW_TOKENS)
    query = [EditQuery(picture("red"), picture("blue"), "make it blue", "keep the border")]
    assert registered.score_edit(query) == local.score_edit(query)
    # the downloaded critic is kept under FIRM_HOME and reused
    assert (tmp_path / "home" / "critics" / "firm-edit-critic" / version / "model" / "config.json").is_file()
    assert CriticScorer.load(uri, max_new_tokens=MAX_NEW_TOKENS).critic_version == uri


# --- the pure readers ---------------------------------------------------------------------------------

JSON_ANSWER = '{"reasoning": "the sky is blue, 2/5 of it", "score": 4}'


def test_score_offsets_find_the_parsed_digit() -> None:
    assert score_offsets(JSON_ANSWER, EXECUTION.digit_patterns, [4]) == [len(JSON_ANSWER) - 2]
    assert score_offsets(JSON_ANSWER, EXECUTION.digit_patterns, [3]) is None
    boxed = "1. red? | yes\nlooks right\n\\boxed{5}"
    assert score_offsets(boxed, INSTRUCTION.digit_patterns, [5]) == [len(boxed) - 2]
    quality = '{"score": [4, 2, 3], "reasoning": "ok"}'
    assert score_offsets(quality, QUALITY.digit_patterns, [4, 2, 3]) == [11, 14, 17]
    # the last match wins, as the parser reads the last object
    twice = '{"score": 4} then {"score": 4}'
    assert score_offsets(twice, CONSISTENCY.digit_patterns, [4]) == [len(twice) - 2]


def test_expected_digit() -> None:
    assert expected_digit({"1": 0.0, "2": 0.0, "3": 0.5, "4": 0.5, "5": 0.0}) == pytest.approx(3.5)
    # not renormalised by the backend: only the digits' share counts
    assert expected_digit({"1": 0.1, "2": 0.0, "3": 0.0, "4": 0.0, "5": 0.1}) == pytest.approx(3.0)
    assert expected_digit(dict.fromkeys("12345", 0.0)) is None


def probs(**by_digit: float) -> dict[str, float]:
    return {digit: by_digit.get(f"d{digit}", 0.0) for digit in "12345"}


def test_read_score_expectation_parsed_and_fallbacks() -> None:
    at_score = TokenProbs(len(JSON_ANSWER) - 2, probs(d4=0.6, d5=0.2))
    elsewhere = TokenProbs(5, probs(d1=1.0))
    answer = ProbedAnswer(JSON_ANSWER, (elsewhere, at_score))
    # (4*0.6 + 5*0.2) / 0.8 = 4.25
    assert read_score(EXECUTION, answer, "", "expectation") == DimensionScore(pytest.approx(4.25), None)
    assert read_score(EXECUTION, answer, "", "parsed") == DimensionScore(4.0, None)
    no_probs = read_score(EXECUTION, ProbedAnswer(JSON_ANSWER, (elsewhere,)), "", "expectation")
    assert no_probs.score == 4.0 and no_probs.failure is None
    assert no_probs.fallback == "expectation unavailable: no digit probabilities at the score position"
    zero_mass = ProbedAnswer(JSON_ANSWER, (TokenProbs(len(JSON_ANSWER) - 2, probs()),))
    assert read_score(EXECUTION, zero_mass, "", "expectation").fallback is not None
    unparsable = read_score(EXECUTION, ProbedAnswer("no idea", ()), "", "expectation")
    assert unparsable.score is None and (unparsable.failure or "").startswith("parse:")


def test_read_score_quality_is_the_minimum_of_three_expectations() -> None:
    text = '{"score": [4, 2, 3], "reasoning": "ok"}'
    positions = (
        TokenProbs(11, probs(d4=1.0)),  # 4
        TokenProbs(14, probs(d2=0.5, d3=0.5)),  # 2.5
        TokenProbs(17, probs(d3=0.25, d1=0.75)),  # 1.5
    )
    assert read_score(QUALITY, ProbedAnswer(text, positions), "", "expectation").score == pytest.approx(1.5)
    assert read_score(QUALITY, ProbedAnswer(text, positions), "", "parsed").score == 2.0
    partial = read_score(QUALITY, ProbedAnswer(text, positions[:2]), "", "expectation")
    assert partial.score == 2.0 and partial.fallback is not None


def test_read_score_plan_then_score_reads_the_boxed_digit() -> None:
    text = "1. a red square? | yes | red\nfine\n\\boxed{3}"
    answer = ProbedAnswer(
        text, (TokenProbs(0, probs(d1=1.0)), TokenProbs(len(text) - 2, probs(d2=1.0, d4=1.0)))
    )
    assert read_score(INSTRUCTION, answer, "", "expectation").score == pytest.approx(3.0)


# --- in-memory image parts ----------------------------------------------------------------------------


def test_in_memory_image_parts(tmp_path: Path) -> None:
    red = ImagePart.from_image(picture("red"))
    assert red.path is None and red.label == f"<in-memory {red.sha256[:12]}>"
    # identity is the content: equal pixels, equal part (and hash); one pixel changed, another sha
    assert red == ImagePart.from_image(picture("red")) and hash(red) == hash(
        ImagePart.from_image(picture("red"))
    )
    changed = picture("red")
    changed.putpixel((0, 0), (254, 0, 0))
    assert ImagePart.from_image(changed).sha256 != red.sha256
    assert ImagePart.from_image(picture("red", (32, 128))).sha256 != red.sha256  # same bytes, other shape
    data, name = red.encoded()
    assert data.startswith(b"\x89PNG") and name == "image.png"
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.convert("RGB").tobytes() == picture("red").tobytes()
    with pytest.raises(ValueError, match="either a path or an in-memory image"):
        ImagePart(path=None, sha256="x")
    with pytest.raises(ValueError, match="either a path or an in-memory image"):
        ImagePart(path=tmp_path / "a.png", sha256="x", image=picture("red"))
    with pytest.raises(InputImageError, match="image file is truncated"):
        ImagePart.from_image(truncated_png(tmp_path))
