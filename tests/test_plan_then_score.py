"""The generation critic's plan-then-score answer: the SFT target written from a scored row, the
parser that reads it back (and what real critics write instead), the guide that holds a tiny model
to it, and the critic prompt that asks for it."""

import json
from pathlib import Path

import pytest
import regex

from firm_assets.curation.dataset import plan_then_score_target
from firm_assets.curation.parsers import (
    MAX_PLAN_ITEMS,
    PLAN_THEN_SCORE,
    ParseError,
    format_plan_then_score,
    parse_plan_then_score,
)
from firm_assets.curation.prompts import load_template
from firm_assets.gen.scores import aligned_verdicts
from resources.chat import Decoding, ImagePart
from resources.tiny_models import VL_NAME
from resources.transformers_backend import TransformersBackend

ROW = {
    "verdicts": json.dumps(
        [
            {"item": 1, "question": "Are there three apples?", "verdict": "yes", "evidence": "three, left"},
            {"item": 2, "question": "Is the scene free of people?", "verdict": "no", "evidence": None},
            {"item": 3, "question": "Is the sign | red?", "verdict": None, "evidence": None},
            {"item": 4, "question": "Is the table wooden?", "verdict": "yes", "evidence": "grain\nvisible"},
        ]
    ),
    "if_reasoning": "Apples right;\n a person stands behind.",
    "if_score": 4.0,
}
TARGET = (
    "1. Are there three apples? | yes | three, left\n"
    "2. Is the scene free of people? | no\n"
    "3. Is the table wooden? | yes | grain visible\n"
    "Apples right; a person stands behind.\n"
    "\\boxed{4}"
)


def test_target_carries_the_answered_items_then_analysis_then_box() -> None:
    """Skipped items (verdict null) are left out and the lines renumbered; evidence is optional;
    fields are kept on one line."""
    assert plan_then_score_target("verdicts", "if_reasoning", "if_score")(ROW) == TARGET


def test_format_refuses_a_score_outside_1_to_5() -> None:
    with pytest.raises(ParseError):
        format_plan_then_score([], "fine", 7)


def test_target_without_verdicts_or_analysis() -> None:
    row = {"verdicts": None, "if_reasoning": None, "if_score": 2.0}
    assert plan_then_score_target("verdicts", "if_reasoning", "if_score")(row) == "\\boxed{2}"


def test_parser_round_trips_the_target() -> None:
    parsed = PLAN_THEN_SCORE.parse(TARGET)
    assert parsed["verdicts"] == [
        {"question": "Are there three apples?", "verdict": "yes", "evidence": "three, left"},
        {"question": "Is the scene free of people?", "verdict": "no", "evidence": ""},
        {"question": "Is the table wooden?", "verdict": "yes", "evidence": "grain visible"},
    ]
    assert parsed["analysis"] == "Apples right; a person stands behind."
    assert parsed["score"] == 4
    # the score prefix re-reads exactly the answer the critic wrote, up to the digit
    assert PLAN_THEN_SCORE.score_prefix(parsed["reasoning"]) + "4}" == TARGET


def test_judge_evidence_reaches_the_aligned_verdicts() -> None:
    items = json.dumps([{"question": "Q1?"}, {"question": "Q2?"}, {"question": "Q3?"}])
    judged = [
        {"item": 1, "verdict": "yes", "analysis": "seen"},
        {"item": 3, "verdict": "no", "analysis": ""},
        {"item": 9, "verdict": "no", "analysis": "no such item"},
    ]
    assert aligned_verdicts(items, judged) == [
        {"item": 1, "question": "Q1?", "verdict": "yes", "evidence": "seen"},
        {"item": 2, "question": "Q2?", "verdict": None, "evidence": None},
        {"item": 3, "question": "Q3?", "verdict": "no", "evidence": None},
    ]


@pytest.mark.parametrize(
    ("text", "verdicts", "analysis", "score"),
    [
        # verdicts in any case, a trailing period, ")" numbering, questions without "?"
        (
            "1) Three apples | YES | on the left\n2. No people | no.\nAnalysis: one person\n\\boxed{3}",
            [("Three apples", "yes", "on the left"), ("No people", "no", "")],
            "one person",
            3,
        ),
        ("1. Is it red? | Yes |\n\\boxed{5}", [("Is it red?", "yes", "")], "", 5),
        # no verdict lines: the final box still gives the score
        (
            "The picture shows everything asked for.\n\\boxed{5}",
            [],
            "The picture shows everything asked for.",
            5,
        ),
        ("\\boxed{ 2 }", [], "", 2),
        # a multi-line analysis; a numbered line after "Analysis:" is analysis, not a verdict
        (
            "1. Cat? | no | a dog\nAnalysis: wrong animal.\n1. Cat? | yes\n\\boxed{1}",
            [("Cat?", "no", "a dog")],
            "wrong animal.\n1. Cat? | yes",
            1,
        ),
        # lines that are not verdicts are not counted as verdicts
        (
            "1. Cat? | maybe | hard to tell\n2. | yes | blank\n\\boxed{3}",
            [],
            "1. Cat? | maybe | hard to tell\n2. | yes | blank",
            3,
        ),
    ],
)
def test_parser_tolerance(text: str, verdicts: list, analysis: str, score: int) -> None:
    parsed = parse_plan_then_score(text)
    assert [(v["question"], v["verdict"], v["evidence"]) for v in parsed["verdicts"]] == verdicts
    assert parsed["analysis"] == analysis and parsed["score"] == score


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1. Cat? | yes | a cat\nAnalysis: fine",  # no box
        "1. Cat? | yes\n\\boxed{7}",  # out of range
        "1. Cat? | yes\n\\boxed{3.5}",
        "Score: \\boxed{N}",  # the prompt's placeholder echoed
    ],
)
def test_parser_failures_raise(text: str) -> None:
    with pytest.raises(ParseError):
        parse_plan_then_score(text)


def test_guide_matches_the_target_layout() -> None:
    guide = regex.compile(PLAN_THEN_SCORE.guide(640))
    assert guide.fullmatch(TARGET)
    assert guide.fullmatch(TARGET[:-1], partial=True) and not guide.fullmatch(TARGET[:-1])
    assert guide.fullmatch("\\boxed{2}") and guide.fullmatch("Analysis: fine\n\\boxed{2}")
    # numbering starts at 1 and goes up by one
    assert not guide.fullmatch(TARGET.replace("2. Is", "3. Is"))
    assert not guide.fullmatch(TARGET.replace("| no", "| maybe"))


@pytest.mark.parametrize("budget", [64, 256, 1024])
def test_guide_longest_answer_fits_the_budget(budget: int) -> None:
    """Filling every free field of the guide to its limit gives an answer of at most `budget`
    characters (one token is at least one character), and one character more is refused."""
    guide = PLAN_THEN_SCORE.guide(budget)
    limits = [int(n) for n in regex.findall(r"\]\{[01],(\d+)\}", guide)]
    n_items = guide.count("\\| (yes|no)")
    assert len(limits) == 2 * n_items + 1 and n_items <= MAX_PLAN_ITEMS
    question_chars, evidence_chars = (limits[0] + 1, limits[1]) if n_items else (0, 0)
    analysis_chars = limits[-1]
    lines = "".join(
        f"{i}. {'q' * question_chars} | yes | {'e' * evidence_chars}\n" for i in range(1, n_items + 1)
    )
    longest = lines + f"{'a' * analysis_chars}\n\\boxed{{5}}"
    assert len(longest) <= budget and regex.fullmatch(guide, longest)
    assert not regex.fullmatch(guide, longest.replace("\n\\boxed", "a\n\\boxed"))
    assert (n_items > 0) == (budget >= 256)


def test_guided_tiny_critic_writes_parseable_plans(
    tiny_models: dict[str, Path], images: list[ImagePart]
) -> None:
    """A random-weight VLM held to the guide writes answers the parser reads, verdicts included."""
    backend = TransformersBackend(str(tiny_models[VL_NAME]), batch_size=4)
    template = load_template("critic_gen_instruction")
    requests = [template.render({"prompt": "two red circles"}, {"image": image}) for image in images[:3]]
    decoding = Decoding(max_new_tokens=256, regex=PLAN_THEN_SCORE.guide(256))
    for answer in backend.generate(requests, decoding):
        parsed = PLAN_THEN_SCORE.parse(answer)
        assert parsed["score"] in range(1, 6)
        assert all(v["verdict"] in ("yes", "no") and v["question"] for v in parsed["verdicts"])


def test_the_critic_prompt_asks_for_this_layout() -> None:
    text = load_template("critic_gen_instruction").user
    assert f"at most {MAX_PLAN_ITEMS} yes/no questions" in text
    assert "<number>. <question> | yes or no | <short evidence from the image>" in text
    assert "overall analysis on one line" in text and "\\boxed{{N}}" in text
