"""Every parser on one table: answer (and the prompt it answered) -> the value it reads, or the
failure it raises. Realistic judge answers: dimension-keyed objects, prose naming another dimension,
conflicting scores ("ambiguous"), pathological input (deep brackets: a failure, never an exception
out of the parser), the plausible formats (`Score: 4`, `4 out of 5`, single quotes, trailing commas,
a "Score" key, a box followed by prose) and echoes of the prompt, reformatted or not. Plus: reading is
linear in the answer's length."""

from __future__ import annotations

from typing import Any

import pytest
from parse_timing import PROMPT, best_seconds

from firm_assets.curation.parsers import (
    CAPTION_TEXT,
    CHECKLIST_JSON,
    CONSISTENCY_JSON,
    EXECUTION_JSON,
    INSTRUCTION_FOLLOWING,
    PLAN_THEN_SCORE,
    QUALITY_JSON,
    ParseError,
    Parser,
)


class Fails:
    """An expected failure whose reason contains `words`."""

    def __init__(self, words: str = "") -> None:
        self.words = words

    def __repr__(self) -> str:
        return f"Fails({self.words!r})"


AMBIGUOUS = Fails("ambiguous")
ECHO_PROMPT = (
    'Edit instruction: paint {"score": 5} on the sign.\nAnswer as {"reasoning": "<text>", "score": <1-5>}.'
)
BOARD_PROMPT = "Prompt: a blackboard showing \\boxed{5}, rated 5/5 by critics"
WRITE_PROMPT = 'Edit instruction: write "Score: 5/5" on the board.'
CHECKLIST = (
    '{"items": [{"category": "count", "item": "three apples", "question": "Are there three apples?"}, '
    '{"category": "negation", "item": "no people", "question": "Is the scene free of people?"}]}'
)
VERDICTS = '{"verdicts": [{"item": 1, "verdict": "yes", "analysis": "ok"}], "analysis": "fine", "score": %d}'

# (parser, answer, prompt, expected): an int or list is the score read, a str the caption, Fails a failure
TABLE: list[tuple[Parser, str, str, Any]] = [
    # --- edit scores: the strict and tolerant forms --------------------------------------------
    (EXECUTION_JSON, '{"reasoning": "done", "score": 4}', "", 4),
    (EXECUTION_JSON, 'Sure!\n```json\n{"reasoning": "done", "score": "5"}\n```', "", 5),
    (EXECUTION_JSON, 'The edit works. {"reasoning": "ok", "score": 3.0} Hope this helps', "", 3),
    (EXECUTION_JSON, "Everything matches the request. \\boxed{2}", "", 2),
    (EXECUTION_JSON, '{"reasoning": "the cup is blue", "score": [4]}', "", 4),
    (EXECUTION_JSON, '{"reasoning": "done", "score": " 2 "}', "", 2),
    (EXECUTION_JSON, '{"reasoning": "done", "score": "4/5"}', "", 4),
    (EXECUTION_JSON, "The cup is blue now; the saucer kept its pattern.\nScore: 4/5", "", 4),
    (EXECUTION_JSON, "Score: 3 / 5. The handle changed shape.", "", 3),
    (EXECUTION_JSON, "About 1/5 of the mug changed. I'd give it 4/5 overall, the rest held.", "", 4),
    (EXECUTION_JSON, "About 1/5 of the mug changed, so\n3/5.", "", 3),
    (EXECUTION_JSON, 'Result: {"reasoning": "b", "score": 3, "detail": {"score": 1}}', "", 3),
    (EXECUTION_JSON, 'Result: {"answer": {"reasoning": "b", "score": 4}}', "", 4),
    (EXECUTION_JSON, '{"reasoning": "a } in the text", "score": 4}', "", 4),
    (EXECUTION_JSON, 'Unclosed { brace, then {"reasoning": "x", "score": 3}', "", 3),
    # --- the plausible formats ------------------------------------------------------------------
    (EXECUTION_JSON, "Score: 4", "", 4),
    (EXECUTION_JSON, "Rating: 4 out of 5", "", 4),
    (EXECUTION_JSON, "**Score:** 4\nThe hat is there.", "", 4),
    (EXECUTION_JSON, "{'reasoning': 'the hat is there', 'score': 4}", "", 4),
    (EXECUTION_JSON, '{"reasoning": "the hat is there", "score": 4,}', "", 4),
    (EXECUTION_JSON, '{"Reasoning": "the hat is there", "Score": 4}', "", 4),
    (EXECUTION_JSON, "\\boxed{4} but then the answer went on", "", 4),
    # --- the dimension asked for ----------------------------------------------------------------
    (EXECUTION_JSON, '{"execution": {"score": 4}, "consistency": {"score": 2}}', "", 4),
    (CONSISTENCY_JSON, '{"execution": {"score": 4}, "consistency": {"score": 2}}', "", 2),
    (EXECUTION_JSON, "I'd rate 4/5, but consistency is only 2/5", "", 4),
    (CONSISTENCY_JSON, "I'd rate 4/5, but consistency is only 2/5", "", 2),
    (EXECUTION_JSON, "Execution: 5/5. Consistency: 3/5.", "", 5),
    (EXECUTION_JSON, "Execution: 4\nConsistency: 2", "", 4),
    (CONSISTENCY_JSON, "Execution: 4\nConsistency: 2", "", 2),
    (EXECUTION_JSON, "The execution of 3 steps went well. Score: 4/5", "", 4),
    (CONSISTENCY_JSON, "Execution: 5/5. Consistency: 3/5.", "", 3),
    (EXECUTION_JSON, '{"Execution Score": 4, "consistency_score": 2}', "", 4),
    (CONSISTENCY_JSON, '{"Execution Score": 4, "consistency_score": 2}', "", 2),
    (EXECUTION_JSON, '{"dimension": "consistency", "score": 2}', "", Fails("only for consistency")),
    (CONSISTENCY_JSON, '{"dimension": "consistency", "score": 2}', "", 2),
    (EXECUTION_JSON, "The background moved. Consistency is only 2/5.", "", Fails("only for consistency")),
    # --- conflicting scores ---------------------------------------------------------------------
    (
        EXECUTION_JSON,
        'First {"reasoning": "a", "score": 2}, final {"reasoning": "b", "score": 5}',
        "",
        AMBIGUOUS,
    ),
    (EXECUTION_JSON, '{"reasoning": "the hat is there", "score": 4}\n\\boxed{2}', "", AMBIGUOUS),
    (EXECUTION_JSON, "Score: 2/5 ... on reflection, Score: 4/5", "", AMBIGUOUS),
    (EXECUTION_JSON, '{"reasoning": "the hat is there", "score": 4} so \\boxed{4}', "", 4),  # they agree
    # --- failures -------------------------------------------------------------------------------
    (EXECUTION_JSON, "", "", Fails("no score")),
    (EXECUTION_JSON, "I think it is good", "", Fails("no score")),
    (EXECUTION_JSON, '{"reasoning": "x", "score": 7}', "", Fails("outside 1-5")),
    (EXECUTION_JSON, '{"reasoning": "x", "score": 0}', "", Fails("outside 1-5")),
    (EXECUTION_JSON, '{"reasoning": "x", "score": 3.5}', "", Fails("whole number")),
    (EXECUTION_JSON, '{"reasoning": "x", "score": true}', "", Fails("boolean")),
    (EXECUTION_JSON, '{"reasoning": "x", "score": "high"}', "", Fails("not a number")),
    (EXECUTION_JSON, '{"reasoning": "x", "sco', "", Fails("no score")),
    (EXECUTION_JSON, '{"reasoning": "x", "score": [4, 5]}', "", Fails("list of 2")),
    (EXECUTION_JSON, '{"reasoning": "x", "score": []}', "", Fails("list of 0")),
    (EXECUTION_JSON, '{"reasoning": 3, "score": 4}', "", Fails("'reasoning' is not a string")),
    (EXECUTION_JSON, "Score: 3.5/5", "", Fails("'3.5' is not a number")),
    (EXECUTION_JSON, "Score: 7/5", "", Fails("outside 1-5")),
    (EXECUTION_JSON, "Score: 10", "", Fails("outside 1-5")),
    (EXECUTION_JSON, "It happened on 1/5/2024 and 4/50 pixels moved.", "", Fails("no score")),
    (EXECUTION_JSON, "About 1/5 of the sky was repainted, the rest is unchanged.", "", Fails("no score")),
    # pathological input: a failure of this answer, never an exception out of the parser
    (EXECUTION_JSON, "[" * 10_000, "", Fails("no score")),
    (EXECUTION_JSON, '{"a":' * 2_000, "", Fails("no score")),
    (EXECUTION_JSON, '{"score": ' + "[" * 5_000 + "4" + "]" * 5_000 + "}", "", Fails("no score")),
    (EXECUTION_JSON, "{}" * 5_000, "", Fails("more than")),
    (EXECUTION_JSON, "{} " * 300 + "Score: 4", "", Fails("more than 256 brace groups")),
    (EXECUTION_JSON, '{"\\"' * 5_000, "", Fails("braces and quotes")),
    # --- echoes of the prompt, verbatim and reformatted -----------------------------------------
    (EXECUTION_JSON, 'You asked me to paint {"score": 5} on the sign.', ECHO_PROMPT, Fails("no score")),
    (EXECUTION_JSON, '{"score": 5}', ECHO_PROMPT, Fails("no score")),  # nothing but a copy
    (EXECUTION_JSON, 'paint {"score":   5}\n on the sign', ECHO_PROMPT, Fails("no score")),
    (EXECUTION_JSON, 'You asked me to paint {"score":5} on the sign.', ECHO_PROMPT, Fails("no score")),
    (EXECUTION_JSON, "You asked me to Paint {'Score': 5} on the sign.", ECHO_PROMPT, Fails("no score")),
    (EXECUTION_JSON, 'You asked me to paint {"score": 5} on the sign.', "", 5),  # the prompt makes it an echo
    (
        EXECUTION_JSON,
        'The instruction says paint {"score": 5} on the sign.\n{"reasoning": "the sign reads 3", "score": 2}',
        ECHO_PROMPT,
        2,
    ),
    (
        EXECUTION_JSON,
        '{"reasoning": "the sign reads 3", "score": 2}\nThe instruction says paint {"score":5} on the sign.',
        ECHO_PROMPT,
        2,
    ),
    (EXECUTION_JSON, "The image shows a blackboard showing \\boxed{5}", BOARD_PROMPT, Fails("no score")),
    (EXECUTION_JSON, "The image shows a blackboard showing \\boxed{ 5 }", BOARD_PROMPT, Fails("no score")),
    (EXECUTION_JSON, "The prompt says it is rated 5/5 by critics.", BOARD_PROMPT, Fails("no score")),
    (EXECUTION_JSON, "The prompt says it is rated 5 / 5 by critics.", BOARD_PROMPT, Fails("no score")),
    (EXECUTION_JSON, "Critics aside, the board is blank. Score: 2/5", BOARD_PROMPT, 2),
    (EXECUTION_JSON, 'You asked me to write "Score: 5 / 5" on the board.', WRITE_PROMPT, Fails("no score")),
    # an honest answer may hold the same text as the prompt: decided by position, not by value
    (EXECUTION_JSON, "The board now reads the requested text. Score: 5/5", WRITE_PROMPT, 5),
    # --- the generation critic: plan, then score ------------------------------------------------
    (PLAN_THEN_SCORE, "1. Is there a cat? | yes | a cat\nAll there.\n\\boxed{4}", "", 4),
    (PLAN_THEN_SCORE, "1. Is there a cat? | yes\n\\boxed{4}\nThe cat is clearly visible.", "", 4),
    (PLAN_THEN_SCORE, "Mostly right.\n\\boxed{ 3 }", "", 3),
    (PLAN_THEN_SCORE, "\\boxed{4} on second thought \\boxed{2}", "", AMBIGUOUS),
    (PLAN_THEN_SCORE, "1. Is there a cat? | yes\nNo score here.", "", Fails("no \\boxed")),
    (PLAN_THEN_SCORE, "\\boxed{6}", "", Fails("outside 1-5")),
    (PLAN_THEN_SCORE, "[" * 10_000, "", Fails("no \\boxed")),
    (PLAN_THEN_SCORE, "The image shows a blackboard showing \\boxed{5}", BOARD_PROMPT, Fails("no \\boxed")),
    (PLAN_THEN_SCORE, "The board is blank.\n\\boxed{1}", BOARD_PROMPT, 1),
    # --- the generation judge: verdicts and a score ---------------------------------------------
    (INSTRUCTION_FOLLOWING, VERDICTS % 4, "", 4),
    (INSTRUCTION_FOLLOWING, "1. YES: apples\n2) No - a person\nMostly right.\n\\boxed{3}", "", 3),
    (INSTRUCTION_FOLLOWING, "1. yes: apples\n\\boxed{3}\nThe person is small.", "", 3),
    (INSTRUCTION_FOLLOWING, VERDICTS % 4 + "\n\\boxed{2}", "", AMBIGUOUS),
    (INSTRUCTION_FOLLOWING, VERDICTS % 4 + "\n\\boxed{4}", "", 4),
    (
        INSTRUCTION_FOLLOWING,
        '{"verdicts": [{"item": 1, "verdict": "maybe"}], "score": 5}',
        "",
        Fails("yes/no"),
    ),
    (
        INSTRUCTION_FOLLOWING,
        'The prompt says "draw \\boxed{5} on a sign" and I cannot see the image.',
        "Prompt: draw \\boxed{5} on a sign",
        Fails("no score"),
    ),
    (
        INSTRUCTION_FOLLOWING,
        "The image shows a blackboard showing \\boxed{5}",
        BOARD_PROMPT,
        Fails("no score"),
    ),
    (INSTRUCTION_FOLLOWING, '{"a":' * 2_000, "", Fails("no score")),
    # --- prompt-free quality ----------------------------------------------------------------------
    (QUALITY_JSON, '{"score": [4, 2, 5], "reasoning": "noisy"}', "", [4, 2, 5]),
    (QUALITY_JSON, "{'Score': [3, 3, 4], 'reasoning': 'clean',}", "", [3, 3, 4]),
    (QUALITY_JSON, '{"score": [4, 2], "reasoning": ""}', "", Fails("list of 3")),
    (QUALITY_JSON, '{"score": 4}', "", Fails("list of 3")),
    (QUALITY_JSON, '{"score": [4, 2, 9]}', "", Fails("outside 1-5")),
    (QUALITY_JSON, '{"score": [4, 2, 5]} {"score": [4, 4, 5]}', "", AMBIGUOUS),
    (QUALITY_JSON, "[" * 10_000, "", Fails("no valid object")),
    # --- checklists (the number of items read) and captions ----------------------------------------
    (CHECKLIST_JSON, CHECKLIST, "", 2),
    (CHECKLIST_JSON, "Here is the plan:\n```json\n" + CHECKLIST + "\n```", "", 2),
    (CHECKLIST_JSON, CHECKLIST[:-20], "", Fails("no valid object")),
    (CHECKLIST_JSON, '{"items": []}', "", Fails("non-empty list")),
    (CHECKLIST_JSON, 'Prompt: a sign reading {"score": 5} and \\boxed{5}', "", Fails("'items'")),
    (CHECKLIST_JSON, '{"a":' * 2_000, "", Fails("no valid object")),
    (CAPTION_TEXT, "  The cup is red now. ", "", "The cup is red now."),
    (CAPTION_TEXT, "   ", "", Fails("empty caption")),
    (CAPTION_TEXT, "x" * 5000, "", Fails("longer than")),
]


def reading(parser: Parser, parsed: dict[str, Any]) -> Any:
    """What the table compares: the score, the quality sub-scores, the checklist's size, the caption."""
    if parser is QUALITY_JSON:
        return parsed["scores"]
    if parser is CHECKLIST_JSON:
        return len(parsed["items"])
    if parser is CAPTION_TEXT:
        return parsed["caption"]
    return parsed["score"]


@pytest.mark.parametrize(
    ("parser", "answer", "prompt", "expected"),
    TABLE,
    ids=[f"{row[0].id}:{row[1][:40]!r}" for row in TABLE],
)
def test_parser_table(parser: Parser, answer: str, prompt: str, expected: Any) -> None:
    if isinstance(expected, Fails):
        with pytest.raises(ParseError, match=None) as failure:
            parser.parse(answer, prompt)
        assert expected.words in str(failure.value), str(failure.value)
    else:
        assert reading(parser, parser.parse(answer, prompt)) == expected


def test_every_parser_is_on_the_table() -> None:
    import firm_assets.curation.parsers as parsers

    defined = {value.id for value in vars(parsers).values() if isinstance(value, Parser)}
    assert defined == {row[0].id for row in TABLE}


def test_the_parse_mode_says_how_the_score_was_written() -> None:
    modes = {
        '{"reasoning": "done", "score": 4}': "strict",
        'Sure: {"reasoning": "done", "score": 4}': "tolerant",
        "{'reasoning': 'done', 'score': 4}": "tolerant",  # not JSON: read as a Python literal
        "Done. \\boxed{4}": "boxed",
        "Done. Score: 4/5": "fraction",
        "Done. Score: 4": "labelled",
    }
    assert {text: EXECUTION_JSON.parse(text)["parse"] for text in modes} == modes


def test_any_exception_while_reading_is_the_answers_parse_failure() -> None:
    """A parser that raises anything (here a RecursionError, as deep JSON once did) fails the answer
    with the reason: the stage records it and caches it, never retrying it as a transient error."""

    def explode(text: str, prompt: str) -> dict[str, Any]:
        raise RecursionError("maximum recursion depth exceeded")

    with pytest.raises(ParseError, match=r"unreadable answer \(RecursionError: maximum recursion"):
        Parser("explodes", "1", explode).parse("[[[[", "")


PATHOLOGICAL = [
    "3/5 ",
    "[",
    '{"a":',
    "Score: 3/5 ",
    "\\boxed{3} ",
    "{[",
    '{"\\"',
    "1. q | yes\n",
    " " * 64 + "x",
]


@pytest.mark.parametrize("unit", PATHOLOGICAL)
def test_reading_is_linear_in_the_answer_length(unit: str) -> None:
    """10 KB then 100 KB of the same pattern, in CPU time (a busy machine does not stretch it). Loose on
    purpose: 100 KB reads in under a second and in at most 50 times the 10 KB time (floored at 5 ms);
    quadratic reading took 6.6 s for 10 KB of "3/5 " alone. Measured figures: docs/bench.md."""
    for parser in (EXECUTION_JSON, PLAN_THEN_SCORE, INSTRUCTION_FOLLOWING, QUALITY_JSON, CHECKLIST_JSON):
        small = best_seconds(parser, (unit * 10_000)[:10_000], PROMPT, repeats=3)
        large = best_seconds(parser, (unit * 100_000)[:100_000], PROMPT, repeats=3)
        assert large < min(1.0, 50 * max(small, 0.005)), (parser.id, unit, small, large)
