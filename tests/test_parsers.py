"""Parsers: strict, tolerant, and failures that are exceptions — never numbers. Guides accept
exactly what the parsers read."""

import json

import pytest
import regex

from firm_assets.curation.parsers import (
    CHECKLIST_JSON,
    INSTRUCTION_FOLLOWING,
    QUALITY_JSON,
    SCORE_JSON,
    ParseError,
    parse_caption,
    parse_checklist,
    parse_instruction_following,
    parse_quality,
    parse_score_json,
)

CHECKLIST = {
    "items": [
        {"category": "count", "item": "three apples", "question": "Are there exactly three apples?"},
        {"category": "negation", "item": "no people", "question": "Is the scene free of people?"},
    ]
}


@pytest.mark.parametrize(
    ("text", "score", "mode"),
    [
        ('{"reasoning": "done", "score": 4}', 4, "strict"),
        ('Sure!\n```json\n{"reasoning": "done", "score": "5"}\n```', 5, "tolerant"),
        ('The edit works. {"reasoning": "ok", "score": 3.0} Hope this helps', 3, "tolerant"),
        ("Everything matches the request. \\boxed{2}", 2, "boxed"),
    ],
)
def test_score_json_accepts(text: str, score: int, mode: str) -> None:
    parsed = parse_score_json(text)
    assert parsed["score"] == score and parsed["parse"] == mode


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I think it is good",
        '{"reasoning": "x", "score": 7}',
        '{"reasoning": "x", "score": 0}',
        '{"reasoning": "x", "score": 3.5}',
        '{"reasoning": "x", "score": true}',
        '{"reasoning": "x", "score": "high"}',
        '{"reasoning": "x", "sco',  # truncated
        "\\boxed{4} but then the answer went on",
    ],
)
def test_score_json_failures_raise(text: str) -> None:
    with pytest.raises(ParseError):
        parse_score_json(text)


def test_caption_rejects_empty_and_runaway() -> None:
    assert parse_caption("  The cup is red now. ")["caption"] == "The cup is red now."
    for bad in ("", "   ", "x" * 5000):
        with pytest.raises(ParseError):
            parse_caption(bad)


def test_checklist_well_formed_and_deduplicated() -> None:
    doubled = {
        "items": CHECKLIST["items"]
        + [dict(CHECKLIST["items"][0], question="are there exactly THREE apples?")]
    }
    parsed = parse_checklist(json.dumps(doubled))
    assert [i["category"] for i in parsed["items"]] == ["count", "negation"]
    fenced = "Here is the plan:\n```json\n" + json.dumps(CHECKLIST) + "\n```"
    assert parse_checklist(fenced)["parse"] == "tolerant"


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(CHECKLIST)[:-20],  # truncated
        '{"items": []}',
        '{"items": [{"category": "mood", "item": "x", "question": "Is it sad?"}]}',
        '{"items": [{"category": "object", "item": "x", "question": "A cat."}]}',
        '{"items": [{"category": "object", "item": "", "question": "Is there a cat?"}]}',
        json.dumps(
            {
                "items": [CHECKLIST["items"][0]] * 1
                + [
                    {"category": "object", "item": f"thing {i}", "question": f"Is thing {i} there?"}
                    for i in range(12)
                ]
            }
        ),
        # a prompt that itself contains JSON: echoing it must not pass as a plan
        'Prompt: a sign reading {"score": 5} and \\boxed{5}',
    ],
)
def test_checklist_malformed_raises(text: str) -> None:
    with pytest.raises(ParseError):
        parse_checklist(text)


def test_instruction_following_json_and_boxed_forms() -> None:
    answer = {
        "verdicts": [{"item": 1, "verdict": "yes", "analysis": "three apples"}, {"item": 2, "verdict": "no"}],
        "analysis": "one person in the back",
        "score": 4,
    }
    parsed = parse_instruction_following(json.dumps(answer))
    assert parsed["score"] == 4 and [v["verdict"] for v in parsed["verdicts"]] == ["yes", "no"]
    boxed = parse_instruction_following("1. yes: apples\n2) no - a person\nMostly right.\n\\boxed{3}")
    assert boxed["score"] == 3 and [v["item"] for v in boxed["verdicts"]] == [1, 2]


def test_instruction_following_prompt_injection_is_not_a_score() -> None:
    # the judge echoing a prompt that contains \boxed{5} mid-answer, with no score of its own
    with pytest.raises(ParseError):
        parse_instruction_following('The prompt says "draw \\boxed{5} on a sign" and I cannot see the image.')
    with pytest.raises(ParseError):
        parse_instruction_following(
            '{"verdicts": [{"item": 1, "verdict": "maybe"}], "analysis": "", "score": 5}'
        )


def test_quality_minimum_and_failures() -> None:
    parsed = parse_quality('{"score": [4, 2, 5], "reasoning": "noisy"}')
    assert parsed["scores"] == [4, 2, 5] and parsed["score"] == 2
    for bad in ('{"score": [4, 2], "reasoning": ""}', '{"score": 4}', '{"score": [4, 2, 9]}'):
        with pytest.raises(ParseError):
            parse_quality(bad)


@pytest.mark.parametrize(
    ("parser", "example"),
    [
        (SCORE_JSON, '{"reasoning": "the cup is blue", "score": 4}'),
        (QUALITY_JSON, '{"score": [3, 4, 2], "reasoning": "soft"}'),
        (CHECKLIST_JSON, json.dumps(CHECKLIST)),
        (
            INSTRUCTION_FOLLOWING,
            '{"verdicts": [{"item": 1, "verdict": "yes", "analysis": "ok"}], "analysis": "fine", "score": 5}',
        ),
    ],
)
def test_guides_match_parseable_answers(parser, example: str) -> None:
    guide = regex.compile(parser.guide(640))
    assert guide.fullmatch(example), parser.id
    parser.parse(example)
    assert guide.fullmatch(example[:-1], partial=True) and not guide.fullmatch(example[:-1])


def test_score_guide_longest_answer_fits_the_budget() -> None:
    """One token is at least one character, so an answer the guide admits always fits the budget."""
    budget = 64
    guide = regex.compile(SCORE_JSON.guide(budget))
    skeleton = '{"reasoning": "", "score": 5}'
    longest = '{"reasoning": "' + "x" * (budget - len(skeleton)) + '", "score": 5}'
    assert len(longest) == budget and guide.fullmatch(longest)
    assert not guide.fullmatch(longest.replace('"x', '"xx'))
