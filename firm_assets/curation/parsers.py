"""Parsers turn a model's answer text into fields; a failure is an exception, never a number.

Every parser reads the whole answer: the JSON objects in it (strict when the answer is exactly one),
a \\boxed{N}, a labelled or answer-ending "N/5" or "N out of 5", a "Score: N". A score parser reads
the score of its own dimension: keyed by it (`{"execution": {"score": 4}}`), named before it in prose
("consistency is only 2/5"), or unlabelled; scores of another dimension are not its own. Two different
scores for the dimension are a failure ("ambiguous"), never "the last one wins". Every parse also gets
the rendered prompt: a score inside a stretch of the answer that copies the prompt (on a normal form,
so reformatting does not hide it) is an echo, never an answer. Any exception while reading is a
parse failure of that answer (`Parser.parse`), and reading is linear in the answer's length
(`score_text.py`).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from firm_assets.curation.score_text import (
    BOXED,
    MAX_PLACES,
    OUT_OF_FIVE,
    EchoCheck,
    Found,
    TooManyPlaces,
    dimension_of_key,
    is_score_key,
    json_objects,
    prose_scores,
)

if TYPE_CHECKING:
    from resources.chat import ChatRequest

SCORE_MIN, SCORE_MAX = 1, 5
MAX_CAPTION_CHARS = 4000
_FORM_PRIORITY = {"strict": 0, "tolerant": 0, "boxed": 1, "fraction": 2, "labelled": 3}


class ParseError(ValueError):
    """The answer does not contain what the stage asked for."""


@dataclass(frozen=True)
class Parser:
    """A named, versioned parse function; the version enters cache keys and code versions.
    `parse(answer, prompt)` reads the answer; `prompt` is the rendered prompt text (see
    `prompt_text`), used only to recognise echoes.
    `guide(max_chars)`, when present, is a regex of the answers this parser accepts whose longest
    match fits in max_chars: with guided decoding the model can only write parseable answers.
    `score_prefix(reasoning)`, when present, is the answer up to the score digit, for reading the
    score as an expectation over the digit's next-token probabilities."""

    id: str
    version: str
    read: Callable[[str, str], dict[str, Any]]
    guide: Callable[[int], str] | None = None
    score_prefix: Callable[[str], str] | None = None

    @property
    def ref(self) -> str:
        """Versioned name that enters code versions and cache keys."""
        return f"{self.id}@{self.version}"

    def parse(self, text: str, prompt: str = "") -> dict[str, Any]:
        """`read`, with any exception it raises turned into a ParseError: an answer that breaks a
        parser is that answer's permanent failure, never a transient error to ask again about."""
        try:
            return self.read(text, prompt)
        except ParseError:
            raise
        except TooManyPlaces as error:
            raise ParseError(str(error)) from error
        except Exception as error:  # every other failure of reading is the answer's too
            raise ParseError(f"unreadable answer ({type(error).__name__}: {str(error)[:200]})") from error


def prompt_text(request: ChatRequest) -> str:
    """The text the model was shown (system, then the user's text parts), for echo checks."""
    return "\n".join([request.system or "", *(part for part in request.user if isinstance(part, str))])


def _score_value(value: Any) -> int:
    """A 1-5 integer score from an int, an integral float, a digit string or "N/5"; anything else fails."""
    if isinstance(value, bool):
        raise ParseError("score is a boolean")
    if isinstance(value, str):
        value = value.strip()
        fraction = OUT_OF_FIVE.fullmatch(value)
        if fraction:
            value = fraction.group(1)
        if not re.fullmatch(r"[0-9]{1,3}(\.0+)?", value):
            raise ParseError(f"score {value[:20]!r} is not a number")
        value = float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ParseError(f"score {value} is not a whole number")
        value = int(value)
    if not isinstance(value, int):
        raise ParseError(f"score has type {type(value).__name__}")
    if not SCORE_MIN <= value <= SCORE_MAX:
        raise ParseError(f"score {value} outside {SCORE_MIN}-{SCORE_MAX}")
    return value


def _single_score(value: Any) -> int:
    """One score, also when written as a one-element list (`"score": [4]`, the FIRM-Edit critic's shape)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ParseError(f"'score' is a list of {len(value)} values, not one")
        value = value[0]
    return _score_value(value)


@dataclass(frozen=True)
class _Reading:
    """One place an answer gives a result: the parsed fields, how it was written (parse mode), the
    dimension it is named by (None: unlabelled) and where it ends."""

    fields: dict[str, Any]
    mode: str
    named: str | None
    end: int


def _decide(readings: list[_Reading], errors: list[str], dimension: str | None, what: str) -> dict[str, Any]:
    """The one result of an answer: readings named by another dimension are not this parser's; those
    named by its own dimension go before unlabelled ones; different scores are "ambiguous"; among
    agreeing readings the JSON object goes first, then \\boxed, "N/5", "Score: N"; the last of a kind."""
    mine = [r for r in readings if r.named is None or dimension is None or r.named == dimension]
    named = [r for r in mine if dimension is not None and r.named == dimension]
    pool = named or mine
    if not pool:
        others = sorted({r.named for r in readings if r.named})
        last = f" (last: {errors[-1]})" if errors else ""
        reason = f" (only for {', '.join(others)})" if others else last
        raise ParseError(f"no {what} in the answer{reason}")
    scores = {json.dumps(r.fields.get("scores", r.fields.get("score"))) for r in pool}
    if len(scores) > 1:
        raise ParseError(f"ambiguous: the answer gives {what}s {', '.join(sorted(scores))}")
    best = min(pool, key=lambda r: (_FORM_PRIORITY[r.mode], -r.end))
    return {**best.fields, "parse": best.mode}


def _objects(text: str, echo: EchoCheck) -> list[Found]:
    """The answer's JSON objects that are not echoes of the prompt."""
    return [found for found in json_objects(text) if not echo(found.start, found.end)]


def _object_mode(found: Found, text: str) -> str:
    return "strict" if found.strict and found.start == 0 and found.end == len(text) else "tolerant"


def _nested(value: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """An object, then the objects nested in it (depth-first): where a wrapped answer may sit."""
    yield value
    for inner in value.values():
        if isinstance(inner, dict):
            yield from _nested(inner)


def _object_readings(
    text: str, prompt: str, validate: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[list[_Reading], list[str], EchoCheck, list[tuple[int, int]]]:
    """Per JSON object of the answer, the first object in it (itself, then nested ones) that validates;
    the failures, the echo check and the spans of the objects (echoes excluded)."""
    echo = EchoCheck(text, prompt)
    readings, errors, spans = [], [], []
    for found in _objects(text, echo):
        spans.append((found.start, found.end))
        for candidate in _nested(found.value):
            try:
                readings.append(_Reading(validate(candidate), _object_mode(found, text), None, found.end))
                break
            except ParseError as error:
                errors.append(str(error))
    return readings, errors, echo, spans


def _first_valid(
    text: str, prompt: str, validate: Callable[[dict[str, Any]], dict[str, Any]], what: str = "valid object"
) -> dict[str, Any]:
    """The answer's one valid object (strict when it is the whole answer); the last when several
    agree on their score, "ambiguous" when they do not; echoed objects are never read."""
    stripped = text.strip()
    readings, errors, _, _ = _object_readings(stripped, prompt, validate)
    return _decide(readings, errors, None, what)


def _field(obj: dict[str, Any], name: str, default: Any = None) -> Any:
    """A key's value in any case ("Score", "score")."""
    key = next((k for k in obj if k.strip().lower() == name), None)
    return obj[key] if key is not None else default


def _reasoning_of(obj: dict[str, Any]) -> str:
    reasoning = _field(obj, "reasoning", "")
    if not isinstance(reasoning, str):
        raise ParseError("'reasoning' is not a string")
    return reasoning.strip()


def _keyed_scores(obj: dict[str, Any], scope: str | None) -> Iterator[tuple[Any, str | None, str]]:
    """(score value, dimension it belongs to, reasoning) for every score in an object: a value keyed
    by a dimension (`"execution": 4` or `"execution": {"score": 4}`), a "score" key (belonging to the
    enclosing dimension key, or to a "dimension" field's value, or unlabelled); objects under other
    keys are searched only when the object has no score of its own."""
    reasoning = _reasoning_of(obj)
    named_field = next((v for k, v in obj.items() if k.strip().lower() in ("dimension", "aspect")), None)
    own_scope = dimension_of_key(named_field) if isinstance(named_field, str) else scope
    found_here = False
    for key, value in obj.items():
        dimension = dimension_of_key(key)
        if dimension is not None:
            found_here = True
            if isinstance(value, dict):
                yield from _keyed_scores(value, dimension)
            else:
                yield value, dimension, reasoning
        elif is_score_key(key):
            found_here = True
            yield value, own_scope, reasoning
    if not found_here:
        for value in obj.values():
            if isinstance(value, dict):
                yield from _keyed_scores(value, own_scope)


def parse_score_json(text: str, prompt: str = "", *, dimension: str) -> dict[str, Any]:
    """`{"reasoning": str, "score": 1-5}` (also `[4]`, `"4"`, a "Score" key, single quotes, trailing
    commas), an object keyed by dimensions, \\boxed{N}, a labelled or answer-ending "N/5" or "N out of
    5", or "Score: N": the score of `dimension`, or a failure when the answer gives none or gives two."""
    stripped = text.strip()
    echo = EchoCheck(stripped, prompt)
    readings, errors, spans = [], [], []
    for found in _objects(stripped, echo):
        spans.append((found.start, found.end))
        try:
            keyed = list(_keyed_scores(found.value, None))
        except ParseError as error:
            errors.append(str(error))
            continue
        if not keyed:
            errors.append("no 'score' key")
        for value, named, reasoning in keyed:
            try:
                fields = {"reasoning": reasoning, "score": _single_score(value)}
            except ParseError as error:
                errors.append(str(error))
                continue
            readings.append(_Reading(fields, _object_mode(found, stripped), named, found.end))
    prose_reasoning = None
    for score in prose_scores(stripped, spans):
        if echo(score.start, score.end):
            continue
        try:
            value = _score_value(score.number)
        except ParseError as error:
            errors.append(str(error))
            continue
        if prose_reasoning is None:
            prose_reasoning = BOXED.sub("", stripped).strip()
        reasoning = prose_reasoning if score.form == "boxed" else stripped
        fields = {"reasoning": reasoning, "score": value}
        readings.append(_Reading(fields, score.form, score.named, score.end))
    return _decide(readings, errors, dimension, "score")


def _boxed_scores(text: str, echo: EchoCheck, skip: list[tuple[int, int]]) -> list[tuple[int, re.Match[str]]]:
    """(score, match) of every \\boxed{N} outside `skip` that is not an echo; a box holding no 1-5
    score fails the answer."""
    boxes = []
    starts = [a for a, _ in skip]
    for match in BOXED.finditer(text):
        index = bisect.bisect_right(starts, match.start()) - 1
        inside = index >= 0 and match.start() < skip[index][1]
        if not inside and not echo(match.start(), match.end()):
            boxes.append((_score_value(match.group(1)), match))
            if len(boxes) > MAX_PLACES:
                raise TooManyPlaces(f"more than {MAX_PLACES} boxed scores in the answer")
    return boxes


def _one_box(text: str, echo: EchoCheck, skip: list[tuple[int, int]] | None = None) -> re.Match[str] | None:
    """The answer's \\boxed{N} of its own (the last, when several agree); "ambiguous" when they differ."""
    boxes = _boxed_scores(text, echo, skip or [])
    if len({score for score, _ in boxes}) > 1:
        raise ParseError(f"ambiguous: the answer boxes scores {', '.join(str(s) for s, _ in boxes)}")
    return boxes[-1][1] if boxes else None


def parse_caption(text: str, prompt: str = "") -> dict[str, Any]:
    """A difference caption is free text; empty or runaway answers are failures. No echo check:
    the prompt itself suggests the caption "No visible differences."."""
    caption = text.strip()
    if not caption:
        raise ParseError("empty caption")
    if len(caption) > MAX_CAPTION_CHARS:
        raise ParseError(f"caption longer than {MAX_CAPTION_CHARS} characters")
    return {"caption": caption}


def free_text(max_chars: int, min_chars: int = 0, stop: str = r'"\\\x00-\x1f') -> str:
    """A regex for up to max_chars characters that cannot close a JSON string (no quote, backslash
    or control character, all of which a JSON string would need escaped)."""
    return f"[^{stop}]{{{min_chars},{max(max_chars, min_chars)}}}"


def guide_score_json(max_chars: int) -> str:
    """Regex that constrains decoding to the reasoning-and-score JSON answer."""
    skeleton = len('{"reasoning": "", "score": 5}')
    return r'\{"reasoning": "' + free_text(max_chars - skeleton) + r'", "score": [1-5]\}'


def score_json_prefix(reasoning: str) -> str:
    """Answer prefix after the reasoning, so only the score is left to read."""
    return '{"reasoning": ' + json.dumps(reasoning) + ', "score": '


def score_json_parser(dimension: str) -> Parser:
    """The score parser of one edit dimension ("execution" or "consistency")."""
    read = partial(parse_score_json, dimension=dimension)
    return Parser(f"{dimension}_score_json", "3", read, guide_score_json, score_json_prefix)


EXECUTION_JSON = score_json_parser("execution")
CONSISTENCY_JSON = score_json_parser("consistency")


def boxed_prefix(reasoning: str) -> str:
    """Answer prefix that opens the boxed score after the reasoning."""
    return f"{reasoning}\n\\boxed{{"


CAPTION_TEXT = Parser("caption_text", "1", parse_caption)


# --- checklists (FIRM-Gen planning) ---------------------------------------------------------------

CHECKLIST_CATEGORIES = (
    "object",
    "count",
    "attribute",
    "relation",
    "text",
    "style",
    "composition",
    "negation",
    "other",
)
MAX_CHECKLIST_ITEMS = 12
MIN_FIELD_CHARS = 8


def _text_field(obj: dict[str, Any], key: str, max_chars: int = 300) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ParseError(f"item has no {key!r} text")
    if len(value) > max_chars:
        raise ParseError(f"{key!r} longer than {max_chars} characters")
    return value.strip()


def _category(raw: dict[str, Any], notes: list[str]) -> str:
    """A known category (any case), or "other" for a category outside the list, with a note."""
    category = raw.get("category")
    if not isinstance(category, str) or not category.strip():
        raise ParseError("item has no category")
    known = category.strip().lower()
    if known in CHECKLIST_CATEGORIES:
        return known
    notes.append(f"category {category!r} read as 'other'")
    return "other"


def _question(raw: dict[str, Any]) -> str:
    """The yes/no question, ending in "?": a missing mark is added (replacing a final . ! : or ;)."""
    question = _text_field(raw, "question")
    if question.endswith("?"):
        return question
    return question.rstrip(".!:; ") + "?"


def _checklist(obj: dict[str, Any]) -> dict[str, Any]:
    items = obj.get("items")
    if not isinstance(items, list) or not items:
        raise ParseError("'items' is not a non-empty list")
    clean, seen, notes = [], set(), []
    for raw in items:
        if not isinstance(raw, dict):
            raise ParseError("an item is not an object")
        category, question = _category(raw, notes), _question(raw)
        key = " ".join(question.lower().split())
        if key in seen:
            continue
        seen.add(key)
        clean.append({"category": category, "item": _text_field(raw, "item"), "question": question})
    if len(clean) > MAX_CHECKLIST_ITEMS:
        notes.append(f"truncated {len(clean)} items to {MAX_CHECKLIST_ITEMS}")
        clean = clean[:MAX_CHECKLIST_ITEMS]
    return {"items": clean, "notes": notes}


def parse_checklist(text: str, prompt: str = "") -> dict[str, Any]:
    """`{"items": [{"category", "item", "question"}]}`: categories outside the list become "other",
    questions get their "?", duplicates go, and a plan longer than MAX_CHECKLIST_ITEMS keeps its
    first items; each such repair is written to "notes"."""
    return _first_valid(text, prompt, _checklist)


def _items_regex(item: str, n_max: int) -> str:
    return item + (f"(, {item}){{0,{n_max - 1}}}" if n_max > 1 else "")


def _fit(max_chars: int, per_item: int, fields: int, n_cap: int) -> tuple[int, int]:
    """How many items and how many characters per free-text field fit in max_chars."""
    n_items = max(1, min(n_cap, max_chars // (per_item + fields * 40)))
    return n_items, max(MIN_FIELD_CHARS, (max_chars // n_items - per_item) // fields)


def guide_checklist(max_chars: int) -> str:
    """Regex that constrains decoding to a well-formed checklist within the length budget."""
    skeleton = len('{"category": "composition", "item": "", "question": "?"}, ')
    n_items, chars = _fit(max_chars - len('{"items": []}'), skeleton, 2, 10)
    text = free_text(chars, min_chars=1)
    item = r'\{"category": "(' + "|".join(CHECKLIST_CATEGORIES) + r')", "item": "' + text
    item += r'", "question": "' + text + r'\?"\}'
    return r'\{"items": \[' + _items_regex(item, n_items) + r"\]\}"


CHECKLIST_JSON = Parser("checklist_json", "3", parse_checklist, guide_checklist)


# --- instruction-following against a checklist --------------------------------------------------

_VERDICT_LINE = re.compile(r"^[ \t]*(\d{1,2})[.)][ \t]*(yes|no)\b[: \t-]*(.*)$", re.IGNORECASE | re.MULTILINE)


def _verdicts(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise ParseError("'verdicts' is not a list")
    verdicts = []
    for entry in raw:
        verdict = entry.get("verdict") if isinstance(entry, dict) else None
        if not isinstance(verdict, str) or verdict.strip().lower() not in ("yes", "no"):
            raise ParseError("a verdict is not yes/no")
        item = entry.get("item")
        if isinstance(item, bool) or not isinstance(item, int):
            raise ParseError("a verdict has no item number")
        verdicts.append(
            {"item": item, "verdict": verdict.strip().lower(), "analysis": str(entry.get("analysis", ""))}
        )
    return verdicts


def _instruction_following(obj: dict[str, Any]) -> dict[str, Any]:
    analysis = _field(obj, "analysis", "")
    if not isinstance(analysis, str):
        raise ParseError("'analysis' is not a string")
    return {
        "verdicts": _verdicts(_field(obj, "verdicts", [])),
        "reasoning": analysis.strip(),
        "score": _single_score(_field(obj, "score")),
    }


def parse_instruction_following(text: str, prompt: str = "") -> dict[str, Any]:
    """JSON `{"verdicts": [{"item", "verdict", "analysis"}], "analysis", "score"}`, or numbered
    "N. yes|no: ..." lines and a \\boxed{N} of its own; verdicts in any case. An object and a box that
    disagree are "ambiguous"."""
    stripped = text.strip()
    readings, errors, echo, spans = _object_readings(stripped, prompt, _instruction_following)
    box = _one_box(stripped, echo, spans)
    if box is not None:
        verdicts = [
            {"item": int(n), "verdict": verdict.lower(), "analysis": rest.strip()}
            for n, verdict, rest in _VERDICT_LINE.findall(stripped)
        ]
        reasoning = BOXED.sub("", _VERDICT_LINE.sub("", stripped)).strip()
        fields = {"verdicts": verdicts, "reasoning": reasoning, "score": _score_value(box.group(1))}
        readings.append(_Reading(fields, "boxed", None, box.end()))
    return _decide(readings, errors, None, "score")


def guide_instruction_following(max_chars: int) -> str:
    """Regex that constrains decoding to per-item verdicts and a final score."""
    skeleton = len('{"item": 10, "verdict": "yes", "analysis": ""}, ')
    tail = len('], "analysis": "", "score": 5}')
    n_items, chars = _fit(max_chars - tail - len('{"verdicts": [') - 40, skeleton, 1, 10)
    text = free_text(chars)
    # items numbered 1, 2, ... in order, so every verdict a guided judge writes names a checklist item
    verdicts = ""
    for number in range(n_items, 1, -1):
        verdicts = f'(, \\{{"item": {number}, "verdict": "(yes|no)", "analysis": "{text}"\\}}{verdicts})?'
    verdicts = f'\\{{"item": 1, "verdict": "(yes|no)", "analysis": "{text}"\\}}{verdicts}'
    return r'\{"verdicts": \[' + verdicts + r'\], "analysis": "' + free_text(40) + r'", "score": [1-5]\}'


INSTRUCTION_FOLLOWING = Parser(
    "instruction_following", "3", parse_instruction_following, guide_instruction_following
)


# --- prompt-free quality ---------------------------------------------------------------------------

QUALITY_ASPECTS = ("aesthetics", "technical", "structure")


def _quality(obj: dict[str, Any]) -> dict[str, Any]:
    scores = _field(obj, "score")
    if not isinstance(scores, list) or len(scores) != len(QUALITY_ASPECTS):
        raise ParseError(f"'score' is not a list of {len(QUALITY_ASPECTS)} numbers")
    values = [_score_value(value) for value in scores]
    return {"scores": values, "score": min(values), "reasoning": _reasoning_of(obj)}


def parse_quality(text: str, prompt: str = "") -> dict[str, Any]:
    """`{"score": [aesthetics, technical, structure], "reasoning"}`; the quality is the minimum."""
    return _first_valid(text, prompt, _quality)


def guide_quality(max_chars: int) -> str:
    """Regex that constrains decoding to the three quality scores and reasoning."""
    skeleton = len('{"score": [5, 5, 5], "reasoning": ""}')
    return r'\{"score": \[[1-5], [1-5], [1-5]\], "reasoning": "' + free_text(max_chars - skeleton) + r'"\}'


QUALITY_JSON = Parser("quality_json", "3", parse_quality, guide_quality)


# --- the generation critic's answer: plan, then score ---------------------------------------------
# The FIRM-Gen critic writes its own checklist and answers it, then analyses, then scores:
#   1. <question> | yes | <evidence>
#   2. <question> | no | <evidence>
#   <overall analysis, one line>
#   \boxed{N}
# `format_plan_then_score` writes this layout (the SFT target), `parse_plan_then_score` reads it back
# (and also an "Analysis:" label before the analysis, as real critics often write one).

MAX_PLAN_ITEMS = 10
PLAN_ANALYSIS_CHARS = 80
_PLAN_FIELD_CHARS = 40  # the least room per question or evidence before the guide drops an item
_ANALYSIS_LINE = re.compile(r"^[ \t]*analysis[ \t]*:", re.IGNORECASE | re.MULTILINE)
# greedy fields, stripped after matching: lazy ones beside [ \t]* are quadratic on long lines of spaces
_PLAN_LINE = re.compile(
    r"[ \t]*\d{1,2}[.)](?P<question>[^|\n]*)\|[ \t]*(?P<verdict>yes|no)\.?[ \t]*(?:\|(?P<evidence>[^\n]*))?",
    re.IGNORECASE,
)


def _one_line(text: str) -> str:
    """A field of the layout: one line, no column separator."""
    return " ".join(text.replace("|", "/").split())


def format_plan_then_score(verdicts: list[dict[str, Any]], analysis: str, score: int) -> str:
    """The critic's answer for `verdicts` ({question, verdict, evidence?}), numbered from 1."""
    lines = []
    for number, entry in enumerate(verdicts, start=1):
        line = f"{number}. {_one_line(entry['question'])} | {entry['verdict']}"
        evidence = _one_line(entry.get("evidence") or "")
        lines.append(f"{line} | {evidence}" if evidence else line)
    if _one_line(analysis):
        lines.append(_one_line(analysis))
    return "\n".join([*lines, f"\\boxed{{{_score_value(score)}}}"])


def parse_plan_then_score(text: str, prompt: str = "") -> dict[str, Any]:
    """Verdict lines (yes/no in any case, evidence optional), an optional `Analysis:` and a
    \\boxed{N} that is not an echo of the prompt (prose may follow it; boxes that disagree are
    "ambiguous"). Without verdict lines the score still counts (verdicts empty). `reasoning` is all
    before the box, so the score prefix re-reads the answer the critic wrote."""
    stripped = text.strip()
    final = _one_box(stripped, EchoCheck(stripped, prompt))
    if final is None:
        raise ParseError("no \\boxed{N} of its own in the answer")
    score = _score_value(final.group(1))
    body = stripped[: final.start()].strip()
    marker = _ANALYSIS_LINE.search(body)
    plan = body[: marker.start()] if marker else body
    verdicts, other = [], []
    for line in plan.splitlines():
        match = _PLAN_LINE.fullmatch(line)
        if match and match["question"].strip():
            verdicts.append(
                {
                    "question": match["question"].strip(),
                    "verdict": match["verdict"].lower(),
                    "evidence": (match["evidence"] or "").strip(),
                }
            )
        else:
            other.append(line)
    analysis = body[marker.end() :] if marker else "\n".join(other)
    return {"verdicts": verdicts, "analysis": analysis.strip(), "reasoning": body, "score": score}


def guide_plan_then_score(max_chars: int) -> str:
    """Numbered verdict lines (1, 2, ... in order, as many as fit beside an analysis of up to
    PLAN_ANALYSIS_CHARS), the analysis (all the room left), the box."""
    tail = len("\n\\boxed{5}")
    line_skeleton = len("10.  | yes | \n")
    room = max_chars - tail - PLAN_ANALYSIS_CHARS
    n_items = max(0, min(MAX_PLAN_ITEMS, room // (line_skeleton + 2 * _PLAN_FIELD_CHARS)))
    field = (room // n_items - line_skeleton) // 2 if n_items else 0
    analysis = max_chars - tail - n_items * (line_skeleton + 2 * field)
    stop = r"|\\\x00-\x1f"
    question = f"[^{stop} ]{free_text(field - 1, stop=stop)}"
    evidence = free_text(field, stop=stop)
    lines = ""
    for number in range(n_items, 0, -1):
        lines = f"({number}\\. {question} \\| (yes|no)( \\| {evidence})?\\n{lines})?"
    analysis_text = free_text(analysis, min_chars=1, stop=r"\\\x00-\x1f")
    return f"{lines}({analysis_text}\\n)?" + r"\\boxed\{[1-5]\}"


PLAN_THEN_SCORE = Parser("plan_then_score", "2", parse_plan_then_score, guide_plan_then_score, boxed_prefix)
