"""Parsers beyond the answer table (tests/test_parser_table.py): checklist repairs, verdict reading,
prompt text, versions, and guides that accept exactly what the parsers read (echoes through a real
stage: tests/test_injection.py)."""

import json

import pytest
import regex

from firm_assets.curation.parsers import (
    CHECKLIST_CATEGORIES,
    CHECKLIST_JSON,
    CONSISTENCY_JSON,
    EXECUTION_JSON,
    INSTRUCTION_FOLLOWING,
    MAX_CHECKLIST_ITEMS,
    PLAN_THEN_SCORE,
    QUALITY_JSON,
    parse_checklist,
    parse_instruction_following,
    parse_quality,
    prompt_text,
)
from firm_assets.curation.prompts import load_template
from firm_assets.gen.checklists import PLAN_LIMITS, TEMPLATE
from resources.chat import ChatRequest, ImagePart

CHECKLIST = {
    "items": [
        {"category": "count", "item": "three apples", "question": "Are there exactly three apples?"},
        {"category": "negation", "item": "no people", "question": "Is the scene free of people?"},
    ]
}


def test_prompt_text_is_system_and_user_text_without_images(images: list[ImagePart]) -> None:
    request = ChatRequest(user=(images[0], "Before.", images[1], "Rate it."), system="You grade.")
    assert prompt_text(request) == "You grade.\nBefore.\nRate it."
    assert prompt_text(ChatRequest(user=("Only text.",))) == "\nOnly text."


def test_checklist_well_formed_and_deduplicated() -> None:
    doubled = {
        "items": CHECKLIST["items"]
        + [dict(CHECKLIST["items"][0], question="are there exactly THREE apples?")]
    }
    parsed = parse_checklist(json.dumps(doubled))
    assert [i["category"] for i in parsed["items"]] == ["count", "negation"]
    assert parsed["notes"] == []
    fenced = "Here is the plan:\n```json\n" + json.dumps(CHECKLIST) + "\n```"
    assert parse_checklist(fenced)["parse"] == "tolerant"


def test_checklist_repairs_categories_and_question_marks_with_notes() -> None:
    items = [
        {"category": "Object", "item": "a cat", "question": "Is there a cat"},
        {"category": "mood", "item": "calm", "question": "Does the scene feel calm."},
        {"category": "count", "item": "two cups", "question": "Are there two cups?"},
    ]
    parsed = parse_checklist(json.dumps({"items": items}))
    assert parsed["items"] == [
        {"category": "object", "item": "a cat", "question": "Is there a cat?"},
        {"category": "other", "item": "calm", "question": "Does the scene feel calm?"},
        {"category": "count", "item": "two cups", "question": "Are there two cups?"},
    ]
    assert parsed["notes"] == ["category 'mood' read as 'other'"]
    assert "other" in CHECKLIST_CATEGORIES


def test_checklist_longer_than_the_limit_is_truncated_with_a_note() -> None:
    items = [
        {"category": "object", "item": f"thing {i}", "question": f"Is thing {i} there?"} for i in range(15)
    ]
    duplicate = dict(items[0], question="is THING 0 there?")
    parsed = parse_checklist(json.dumps({"items": [*items, duplicate]}))
    assert MAX_CHECKLIST_ITEMS == 12
    assert [i["item"] for i in parsed["items"]] == [f"thing {i}" for i in range(12)]
    assert parsed["notes"] == ["truncated 15 items to 12"]


def test_checklist_prompt_states_the_parser_limits() -> None:
    request = load_template(TEMPLATE).render({"prompt": "a red cube", **PLAN_LIMITS}, {})
    text = prompt_text(request)
    assert f"at most {MAX_CHECKLIST_ITEMS} items" in text
    assert "Categories: " + ", ".join(CHECKLIST_CATEGORIES) + "." in text


def test_instruction_following_json_and_boxed_forms() -> None:
    answer = {
        "verdicts": [{"item": 1, "verdict": "yes", "analysis": "three apples"}, {"item": 2, "verdict": "no"}],
        "analysis": "one person in the back",
        "score": 4,
    }
    parsed = parse_instruction_following(json.dumps(answer))
    assert parsed["score"] == 4 and [v["verdict"] for v in parsed["verdicts"]] == ["yes", "no"]
    boxed = parse_instruction_following("1. YES: apples\n2) No - a person\nMostly right.\n\\boxed{3}")
    assert boxed["score"] == 3 and [v["item"] for v in boxed["verdicts"]] == [1, 2]
    assert [v["verdict"] for v in boxed["verdicts"]] == ["yes", "no"]


def test_instruction_following_reads_verdicts_in_any_case_and_a_listed_score() -> None:
    answer = {
        "verdicts": [
            {"item": 1, "verdict": "Yes", "analysis": "apples"},
            {"item": 2, "verdict": "no"},
            {"item": 3, "verdict": "YES "},
        ],
        "analysis": "fine",
        "score": [4],
    }
    parsed = parse_instruction_following(json.dumps(answer))
    assert [v["verdict"] for v in parsed["verdicts"]] == ["yes", "no", "yes"] and parsed["score"] == 4


def test_parser_versions_moved_where_behaviour_changed() -> None:
    """Versions enter cache keys: every parser whose reading changed recomputes its stage."""
    parsers = (EXECUTION_JSON, CONSISTENCY_JSON, CHECKLIST_JSON, INSTRUCTION_FOLLOWING, QUALITY_JSON)
    assert {p.ref for p in (*parsers, PLAN_THEN_SCORE)} == {
        "execution_score_json@3",
        "consistency_score_json@3",
        "checklist_json@3",
        "instruction_following@3",
        "quality_json@3",
        "plan_then_score@2",
    }


def test_quality_is_the_minimum() -> None:
    parsed = parse_quality('{"score": [4, 2, 5], "reasoning": "noisy"}')
    assert parsed["scores"] == [4, 2, 5] and parsed["score"] == 2


@pytest.mark.parametrize(
    ("parser", "example"),
    [
        (EXECUTION_JSON, '{"reasoning": "the cup is blue", "score": 4}'),
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
    parser.parse(example, "")
    assert guide.fullmatch(example[:-1], partial=True) and not guide.fullmatch(example[:-1])


def test_score_guide_longest_answer_fits_the_budget() -> None:
    """One token is at least one character, so an answer the guide admits always fits the budget."""
    budget = 64
    guide = regex.compile(EXECUTION_JSON.guide(budget))
    skeleton = '{"reasoning": "", "score": 5}'
    longest = '{"reasoning": "' + "x" * (budget - len(skeleton)) + '", "score": 5}'
    assert len(longest) == budget and guide.fullmatch(longest)
    assert not guide.fullmatch(longest.replace('"x', '"xx'))
