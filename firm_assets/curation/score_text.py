"""Where an answer writes a score: JSON objects, \\boxed{N}, "N/5", "Score: N", in linear time.

The parsers (`parsers.py`) decide what a score means; this module only finds the places a score may
be written, each with its span, so that
- an answer is read in time linear in its length (one scan for objects, bounded windows for labels:
  a 100 KB answer of "3/5 " or of nested brackets takes milliseconds, never a RecursionError);
- the dimension a score belongs to can be told ("consistency is only 2/5" names consistency);
- an echo of the prompt is recognised by position: a score is an echo when the stretch of the answer
  around it, compared on a normal form (case, whitespace and quotes folded), is a copy of the prompt,
  so `{"score":5}` reformatted from an instruction is still the instruction's; a score the model
  writes itself after its own words is its own, even when the prompt holds the same text.
Hand-written because no maintained library finds JSON objects inside prose with these bounds
(`json.JSONDecoder.raw_decode` from every "{" is quadratic); decoding itself is `json`, then
`ast.literal_eval` for single quotes and trailing commas.
"""

from __future__ import annotations

import ast
import bisect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_OBJECT_DEPTH = 8  # an object nested deeper than this is not a score answer and is never decoded
MAX_PLACES = 256  # brace groups, or score places in prose, beyond which an answer is no judgement
MAX_TOKENS = 4096  # braces and quoted strings inside objects, likewise
ECHO_CONTEXT = 8  # normalised characters around a score that must also copy the prompt to make an echo
NAME_WINDOW = 60  # characters before a prose score searched for the dimension it names

NUMBER = r"[0-9]+(?:\.[0-9]+)?"
# "4/5", "4 / 5", "4 out of 5": not part of a date, a longer fraction or a decimal ("1/5/24", "4/50")
OUT_OF_FIVE = re.compile(rf"(?<![\w./])({NUMBER})\s*(?:/|\bout of\b)\s*5(?![\w/]|\.[0-9])", re.IGNORECASE)
BOXED = re.compile(rf"\\boxed\{{\s*({NUMBER})\s*\}}")
# "Score: 4", "Rating - 4", "score of 4", "**Score:** 4", "Execution: 4" (a following "/5" makes it a
# fraction instead); a dimension's name labels a score only with a colon ("the execution of 3 steps")
_LABELLED = re.compile(
    r"\b(?:(?:score|rating|grade)\b[ \t*]*(?:is|of|=|:|-)?"
    r"|(?:execution|consistency|instruction[ _-]following|quality)(?:[ _]score)?[ \t*]*[:=])"
    rf"[ \t*]*({NUMBER})(?![0-9])(?![ \t]*(?:/|out of\b))",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?;\n]")
# the words that name a scored dimension in prose or in a JSON key
DIMENSION_NAMES = {
    "execution": ("execution",),
    "consistency": ("consistency",),
    "instruction": ("instruction_following", "instruction", "alignment", "prompt_following"),
    "quality": ("quality",),
}
_DIMENSION_WORD = re.compile(
    r"\b(execution|consistency|instruction[ _-]following|instruction|alignment|quality)\b", re.IGNORECASE
)
_NON_SPACE = re.compile(r"\S")
_OPEN_BRACE = re.compile(r"\{")
_STRUCTURE = re.compile(r"""[{}"']""")
_STRINGS = {
    '"': re.compile(r'"(?:[^"\\\n]|\\.)*+"'),
    "'": re.compile(r"'(?:[^'\\\n]|\\.)*+'"),
}
_QUOTES = str.maketrans({"'": '"', "`": '"', "\u2018": '"', "\u2019": '"', "\u201c": '"', "\u201d": '"'})
# score-shaped text in an input: a JSON score object, \boxed{N}, N/5, "score: N"
_SCORE_SHAPED = re.compile(
    rf"""["']?score["']?\s*:\s*\[?\s*["']?[0-9]|\\boxed\{{\s*[0-9]|{OUT_OF_FIVE.pattern}|{_LABELLED.pattern}""",
    re.IGNORECASE,
)


def normal_form(text: str) -> str:
    """Case folded, quotes unified, all whitespace removed: `{"score":5}`, `{'Score': 5}` and
    `{ "score" : 5 }` are one text."""
    return "".join(text.translate(_QUOTES).lower().split())


def has_score_text(text: str) -> bool:
    """Whether an input (an instruction, a requirement, a prompt) contains score-shaped text."""
    return bool(_SCORE_SHAPED.search(text))


def dimension_of_key(key: str) -> str | None:
    """The dimension a JSON key names ("execution", "Execution Score", "consistency_score"), if any."""
    words = re.sub(r"[^a-z]+", "_", key.lower()).strip("_").removesuffix("_score")
    return next((dim for dim, names in DIMENSION_NAMES.items() if words in names), None)


def is_score_key(key: str) -> bool:
    """Judges name the score field differently; these names count as the score."""
    return key.strip().lower() in ("score", "rating")


@dataclass(frozen=True)
class Found:
    """A JSON object decoded from text[start:end]; `strict` when plain JSON decoded it."""

    start: int
    end: int
    value: dict[str, Any]
    strict: bool


@dataclass(frozen=True)
class ProseScore:
    """A score written in prose: its number's text, the span it occupies (label included), its form
    ("boxed", "fraction", "labelled") and the dimension the words before it name, if any."""

    number: str
    start: int
    end: int
    form: str
    named: str | None


def _decode(span: str) -> tuple[dict[str, Any] | None, bool]:
    """The object a span holds (JSON first, then a Python literal: single quotes, trailing commas)."""
    try:
        value = json.loads(span)
        if isinstance(value, dict):
            return value, True
    except (ValueError, RecursionError):
        pass
    try:
        value = ast.literal_eval(span)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None, False
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return value, False
    return None, False


class TooManyPlaces(ValueError):
    """An answer with more brace groups, quotes or score places than any judgement writes."""


@dataclass
class _Group:
    """A brace group while it is open: where it starts, how deep it nests, the groups closed in it."""

    start: int
    height: int = 0
    inner: list[tuple[int, int, list]] = field(default_factory=list)


def _groups(text: str) -> list[tuple[int, int, list]]:
    """The text's brace groups as (start, end, groups inside), outermost first. One left-to-right
    pass that jumps between braces and quotes in C: a quoted string inside a group (one line) is
    skipped whole, so a "}" in a reasoning string does not close it; a quote that does not close on
    its line ends what is read of that line; outside groups quotes are prose. A group nested more than
    MAX_OBJECT_DEPTH deep hands up the groups inside it; groups never closed hand up theirs."""
    open_groups: list[_Group] = []
    closed: list[tuple[int, int, list]] = []
    position, tokens = 0, 0
    while True:
        if not open_groups:
            opening = _OPEN_BRACE.search(text, position)
            if opening is None:
                break
            open_groups.append(_Group(opening.start()))
            position = opening.end()
            continue
        token = _STRUCTURE.search(text, position)
        if token is None:
            break
        tokens += 1
        if tokens > MAX_TOKENS:
            raise TooManyPlaces(f"more than {MAX_TOKENS} braces and quotes inside objects")
        char = token.group(0)
        if char in "\"'":
            string = _STRINGS[char].match(text, token.start())
            line_end = text.find("\n", token.start())
            position = string.end() if string else (len(text) if line_end < 0 else line_end)
        elif char == "{":
            open_groups.append(_Group(token.start()))
            position = token.end()
        else:
            group = open_groups.pop()
            position = token.end()
            height = group.height + 1
            handed = [(group.start, position, group.inner)] if height <= MAX_OBJECT_DEPTH else group.inner
            if open_groups:
                open_groups[-1].height = max(open_groups[-1].height, height)
                open_groups[-1].inner += handed
            else:
                closed += handed
    for group in open_groups:
        closed += group.inner
    return closed


def json_objects(text: str) -> list[Found]:
    """The outermost decodable objects of the text, in order: brace groups (at most MAX_OBJECT_DEPTH
    deep) that decode; a group that does not decode is searched for groups inside it. More than
    MAX_PLACES groups raise TooManyPlaces: such an answer is no judgement, and the bound keeps
    reading fast."""
    found: list[Found] = []
    budget = [MAX_PLACES]
    _collect(text, _groups(text), found, budget)
    return found


def _collect(text: str, groups: list[tuple[int, int, list]], found: list[Found], budget: list[int]) -> None:
    for start, end, inner in groups:
        budget[0] -= 1
        if budget[0] < 0:
            raise TooManyPlaces(f"more than {MAX_PLACES} brace groups in the answer")
        value, strict = _decode(text[start:end])
        if value is not None:
            found.append(Found(start, end, value, strict))
        else:
            _collect(text, inner, found, budget)


# "Score: 4/5", "I'd give it 4 out of 5": a fraction labelled within 20 characters before it
_LABELLED_FRACTION = re.compile(
    r"\b(?:score|rating|rated?|grade|give|overall|execution|consistency|instruction|quality)\b[^\n0-9]{0,20}"
    + OUT_OF_FIVE.pattern,
    re.IGNORECASE,
)
# a fraction that ends the answer ("... so 3/5."); other fractions in prose are no score
# ("about 1/5 of the sky changed")
_ENDING_FRACTION = re.compile(OUT_OF_FIVE.pattern + r"[\s.!*)\]]*\Z", re.IGNORECASE)


def prose_scores(text: str, skip: list[tuple[int, int]]) -> list[ProseScore]:
    """Every \\boxed{N}, labelled or answer-ending N/5 and labelled "Score: N" outside the `skip`
    spans (the decoded objects), in order; one number is one score (a labelled fraction is one). More
    than MAX_PLACES raise TooManyPlaces."""
    found: dict[int, ProseScore] = {}
    starts = [a for a, _ in skip]

    def outside(start: int) -> bool:
        index = bisect.bisect_right(starts, start) - 1
        return index < 0 or start >= skip[index][1]

    forms = (
        ("boxed", BOXED.finditer(text)),
        ("fraction", _LABELLED_FRACTION.finditer(text)),
        ("fraction", iter(filter(None, [_ENDING_FRACTION.search(text)]))),
        ("labelled", _LABELLED.finditer(text)),
    )
    for form, matches in forms:
        for match in matches:
            if outside(match.start()) and match.start(1) not in found:
                found[match.start(1)] = ProseScore(match.group(1), match.start(), match.end(), form, None)
                if len(found) > MAX_PLACES:
                    raise TooManyPlaces(f"more than {MAX_PLACES} score places in the answer")
    named, previous_end = [], 0
    for key in sorted(found):
        named.append(_with_name(text, found[key], previous_end))
        previous_end = found[key].end
    return named


def _with_name(text: str, score: ProseScore, previous_end: int) -> ProseScore:
    """The score with the dimension named by the last dimension word of its clause: the text before
    it, back to the previous score, a sentence end or NAME_WINDOW characters."""
    start = max(previous_end, score.start - NAME_WINDOW)
    window = text[start : score.end]
    ends = list(_SENTENCE_END.finditer(window, 0, score.start - start))
    clause = window[ends[-1].end() :] if ends else window
    words = _DIMENSION_WORD.findall(clause)
    name = dimension_of_key(words[-1]) if words else None
    return ProseScore(score.number, score.start, score.end, score.form, name)


class EchoCheck:
    """Whether a span of an answer copies the prompt, judged by position: the span and up to
    ECHO_CONTEXT non-space characters around it (as many as the answer has), in normal form, must
    appear together in the prompt's normal form. An answer that is nothing but a copy of prompt text
    is an echo; a score after the model's own words is not, whatever the prompt holds."""

    def __init__(self, answer: str, prompt: str) -> None:
        self.answer = answer
        self.prompt = normal_form(prompt)
        self._reversed: str | None = None
        self._seen: dict[str, bool] = {}

    def __call__(self, start: int, end: int) -> bool:
        if not self.prompt:
            return False
        core = normal_form(self.answer[start:end])
        if not core:
            return False
        left = self._before(start)
        right = "".join(m.group(0) for m in _take(_NON_SPACE.finditer(self.answer, end), ECHO_CONTEXT))
        left, right = normal_form(left), normal_form(right)
        wanted = min(ECHO_CONTEXT, len(left) + len(right))
        for taken_left in range(max(0, wanted - len(right)), min(wanted, len(left)) + 1):
            needle = left[len(left) - taken_left :] + core + right[: wanted - taken_left]
            if needle not in self._seen:
                self._seen[needle] = needle in self.prompt
            if self._seen[needle]:
                return True
        return False

    def _before(self, start: int) -> str:
        if self._reversed is None:
            self._reversed = self.answer[::-1]
        chars = _take(_NON_SPACE.finditer(self._reversed, len(self.answer) - start), ECHO_CONTEXT)
        return "".join(m.group(0) for m in chars)[::-1]


def _take(matches: Iterator[re.Match[str]], count: int) -> list[re.Match[str]]:
    taken = []
    for match in matches:
        taken.append(match)
        if len(taken) == count:
            break
    return taken
