"""Parsers turn a model's answer text into fields; a failure is an exception, never a number.

Each parser is strict first (the whole answer is the expected JSON) and tolerant second (the last
well-formed JSON object in fences or prose, a trailing \\boxed{N}, a "Score: N/5"). Every parse also
gets the rendered prompt: an object, \\boxed{N} or N/5 that is a verbatim span of the prompt is an
echo, never an answer, so a prompt (or an instruction, caption or user prompt inside it) that quotes
`{"score": 5}` cannot put a 5 in the store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resources.chat import ChatRequest

SCORE_MIN, SCORE_MAX = 1, 5
MAX_CAPTION_CHARS = 4000
_BOXED = re.compile(r"\\boxed\{\s*([0-9]+(?:\.[0-9]+)?)\s*\}")
# "4/5", "Score: 4 / 5." — not part of a date, a longer fraction or a decimal ("1/5/24", "4/50")
_OUT_OF_FIVE = re.compile(r"(?<![\w./])([0-9]+(?:\.[0-9]+)?)\s*/\s*5(?![\w/]|\.[0-9])")
# a fraction in prose is a score only when labelled as one or when it ends the answer
# ("about 1/5 of the sky changed" is not a score)
_SCORE_LABEL = re.compile(r"\b(score|rating|rated?|grade|give|overall)\b[^\n0-9]{0,20}$", re.IGNORECASE)
_ANSWER_END = re.compile(r"[\s.!*)\]]*")


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
    parse: Callable[[str, str], dict[str, Any]]
    guide: Callable[[int], str] | None = None
    score_prefix: Callable[[str], str] | None = None

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"


def prompt_text(request: ChatRequest) -> str:
    """The text the model was shown (system, then the user's text parts), for echo checks."""
    return "\n".join([request.system or "", *(part for part in request.user if isinstance(part, str))])


def _squash(text: str) -> str:
    return " ".join(text.split())


def _echoed(span: str, prompt: str) -> bool:
    """Whether a span of the answer appears verbatim in the prompt (whitespace runs count as one)."""
    squashed = _squash(span)
    return bool(squashed) and squashed in _squash(prompt)


def _score_value(value: Any) -> int:
    """A 1-5 integer score from an int, an integral float, a digit string or "N/5"; anything else fails."""
    if isinstance(value, bool):
        raise ParseError("score is a boolean")
    if isinstance(value, str):
        value = value.strip()
        fraction = _OUT_OF_FIVE.fullmatch(value)
        if fraction:
            value = fraction.group(1)
        if not re.fullmatch(r"[0-9]+(\.0+)?", value):
            raise ParseError(f"score {value!r} is not a number")
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


def _json_objects(text: str, prompt: str) -> list[dict[str, Any]]:
    """Every JSON object that decodes from some '{' in the text and is not an echo of the prompt,
    the one ending last first (an enclosing object before the objects nested in it)."""
    decoder = json.JSONDecoder()
    found = []
    for match in re.finditer(r"\{", text):
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and not _echoed(text[match.start() : end], prompt):
            found.append((-end, match.start(), value))
    return [value for _, _, value in sorted(found, key=lambda entry: entry[:2])]


def _first_valid(
    text: str, prompt: str, validate: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Strict whole-answer JSON first, then the last JSON object in fences or prose that validates;
    objects that are verbatim spans of the prompt are skipped."""
    stripped = text.strip()
    try:
        obj = json.loads(stripped)
        if isinstance(obj, dict) and not _echoed(stripped, prompt):
            return {**validate(obj), "parse": "strict"}
    except (json.JSONDecodeError, ParseError):
        pass
    errors = []
    for obj in _json_objects(stripped, prompt):
        try:
            return {**validate(obj), "parse": "tolerant"}
        except ParseError as error:
            errors.append(str(error))
    raise ParseError("no valid object in the answer" + (f" (last: {errors[0]})" if errors else ""))


def _final_boxed(text: str, prompt: str) -> re.Match[str] | None:
    """The \\boxed{N} the answer ends with, unless it repeats the prompt."""
    matches = list(_BOXED.finditer(text))
    if not matches or matches[-1].end() != len(text) or _echoed(matches[-1].group(0), prompt):
        return None
    return matches[-1]


def _score_object(obj: dict[str, Any]) -> dict[str, Any]:
    if "score" not in obj:
        raise ParseError("no 'score' key")
    reasoning = obj.get("reasoning", "")
    if not isinstance(reasoning, str):
        raise ParseError("'reasoning' is not a string")
    return {"reasoning": reasoning.strip(), "score": _single_score(obj["score"])}


def parse_score_json(text: str, prompt: str = "") -> dict[str, Any]:
    """`{"reasoning": str, "score": 1-5}` (also `[4]`, `"4"`): strict, then the last embedded JSON
    object, then a final \\boxed{N}, then the last "N/5" in prose that is labelled as a score or ends
    the answer; never a span of the prompt."""
    try:
        return _first_valid(text, prompt, _score_object)
    except ParseError as error:
        failure = error
    stripped = text.strip()
    boxed = _final_boxed(stripped, prompt)
    if boxed:
        reasoning = _BOXED.sub("", stripped).strip()
        return {"reasoning": reasoning, "score": _score_value(boxed.group(1)), "parse": "boxed"}
    fractions = [
        m
        for m in _OUT_OF_FIVE.finditer(stripped)
        if (_SCORE_LABEL.search(stripped[: m.start()]) or _ANSWER_END.fullmatch(stripped[m.end() :]))
        and not _echoed(m.group(0), prompt)
    ]
    if fractions:
        return {"reasoning": stripped, "score": _score_value(fractions[-1].group(1)), "parse": "fraction"}
    raise ParseError(f"no score in the answer: {failure}")


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
    skeleton = len('{"reasoning": "", "score": 5}')
    return r'\{"reasoning": "' + free_text(max_chars - skeleton) + r'", "score": [1-5]\}'


def score_json_prefix(reasoning: str) -> str:
    return '{"reasoning": ' + json.dumps(reasoning) + ', "score": '


SCORE_JSON = Parser("score_json", "2", parse_score_json, guide_score_json, score_json_prefix)


def boxed_prefix(reasoning: str) -> str:
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
    skeleton = len('{"category": "composition", "item": "", "question": "?"}, ')
    n_items, chars = _fit(max_chars - len('{"items": []}'), skeleton, 2, 10)
    text = free_text(chars, min_chars=1)
    item = r'\{"category": "(' + "|".join(CHECKLIST_CATEGORIES) + r')", "item": "' + text
    item += r'", "question": "' + text + r'\?"\}'
    return r'\{"items": \[' + _items_regex(item, n_items) + r"\]\}"


CHECKLIST_JSON = Parser("checklist_json", "2", parse_checklist, guide_checklist)


# --- instruction-following against a checklist --------------------------------------------------

_VERDICT_LINE = re.compile(r"^\s*(\d{1,2})[.)]\s*(yes|no)\b[:\s-]*(.*)$", re.IGNORECASE | re.MULTILINE)


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
    analysis = obj.get("analysis", "")
    if not isinstance(analysis, str):
        raise ParseError("'analysis' is not a string")
    return {
        "verdicts": _verdicts(obj.get("verdicts", [])),
        "reasoning": analysis.strip(),
        "score": _single_score(obj.get("score")),
    }


def parse_instruction_following(text: str, prompt: str = "") -> dict[str, Any]:
    """JSON `{"verdicts": [{"item", "verdict", "analysis"}], "analysis", "score"}`, or numbered
    "N. yes|no: ..." lines and an answer ending in \\boxed{N}; verdicts in any case."""
    try:
        return _first_valid(text, prompt, _instruction_following)
    except ParseError:
        pass
    stripped = text.strip()
    boxed = _final_boxed(stripped, prompt)
    if boxed is None:
        raise ParseError("no score object and no final \\boxed{N} of its own")
    verdicts = [
        {"item": int(n), "verdict": verdict.lower(), "analysis": rest.strip()}
        for n, verdict, rest in _VERDICT_LINE.findall(stripped)
    ]
    reasoning = _BOXED.sub("", _VERDICT_LINE.sub("", stripped)).strip()
    score = _score_value(boxed.group(1))
    return {"verdicts": verdicts, "reasoning": reasoning, "score": score, "parse": "boxed"}


def guide_instruction_following(max_chars: int) -> str:
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
    "instruction_following", "2", parse_instruction_following, guide_instruction_following
)


# --- prompt-free quality ---------------------------------------------------------------------------

QUALITY_ASPECTS = ("aesthetics", "technical", "structure")


def _quality(obj: dict[str, Any]) -> dict[str, Any]:
    scores = obj.get("score")
    if not isinstance(scores, list) or len(scores) != len(QUALITY_ASPECTS):
        raise ParseError(f"'score' is not a list of {len(QUALITY_ASPECTS)} numbers")
    values = [_score_value(value) for value in scores]
    reasoning = obj.get("reasoning", "")
    if not isinstance(reasoning, str):
        raise ParseError("'reasoning' is not a string")
    return {"scores": values, "score": min(values), "reasoning": reasoning.strip()}


def parse_quality(text: str, prompt: str = "") -> dict[str, Any]:
    """`{"score": [aesthetics, technical, structure], "reasoning"}`; the quality is the minimum."""
    return _first_valid(text, prompt, _quality)


def guide_quality(max_chars: int) -> str:
    skeleton = len('{"score": [5, 5, 5], "reasoning": ""}')
    return r'\{"score": \[[1-5], [1-5], [1-5]\], "reasoning": "' + free_text(max_chars - skeleton) + r'"\}'


QUALITY_JSON = Parser("quality_json", "2", parse_quality, guide_quality)


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
_PLAN_LINE = re.compile(
    r"[ \t]*\d{1,2}[.)][ \t]*(?P<question>[^|\n]*?)[ \t]*\|[ \t]*(?P<verdict>yes|no)\.?[ \t]*"
    r"(?:\|[ \t]*(?P<evidence>[^\n]*?))?[ \t]*",
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
    """Verdict lines (yes/no in any case, evidence optional), an optional `Analysis:` and a final
    \\boxed{N} that is not an echo of the prompt. Without verdict lines the score still counts
    (verdicts empty). `reasoning` is all before the box, so the score prefix re-reads the answer the
    critic wrote."""
    stripped = text.strip()
    final = _final_boxed(stripped, prompt)
    if final is None:
        raise ParseError("the answer does not end in \\boxed{N} of its own")
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


PLAN_THEN_SCORE = Parser("plan_then_score", "1", parse_plan_then_score, guide_plan_then_score, boxed_prefix)
