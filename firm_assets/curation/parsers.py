"""Parsers turn a model's answer text into fields; a failure is an exception, never a number.

Each parser is strict first (the whole answer is the expected JSON) and tolerant second (JSON in a
code fence or inside prose, a trailing \\boxed{N}); the answer, not the prompt, is parsed, so a prompt
that quotes JSON or \\boxed{5} cannot inject a score.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SCORE_MIN, SCORE_MAX = 1, 5
MAX_CAPTION_CHARS = 4000
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_BOXED = re.compile(r"\\boxed\{\s*([0-9]+(?:\.[0-9]+)?)\s*\}")


class ParseError(ValueError):
    """The answer does not contain what the stage asked for."""


@dataclass(frozen=True)
class Parser:
    """A named, versioned parse function; the version enters cache keys and code versions."""

    id: str
    version: str
    parse: Callable[[str], dict[str, Any]]

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"


def _score_value(value: Any) -> int:
    """A 1-5 integer score from an int, an integral float or a digit string; anything else fails."""
    if isinstance(value, bool):
        raise ParseError("score is a boolean")
    if isinstance(value, str):
        value = value.strip()
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


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object that can be decoded starting at some '{' in the text, in order."""
    decoder = json.JSONDecoder()
    found = []
    for start in [m.start() for m in re.finditer(r"\{", text)]:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def _score_object(obj: dict[str, Any]) -> dict[str, Any]:
    if "score" not in obj:
        raise ParseError("no 'score' key")
    reasoning = obj.get("reasoning", "")
    if not isinstance(reasoning, str):
        raise ParseError("'reasoning' is not a string")
    return {"reasoning": reasoning.strip(), "score": _score_value(obj["score"])}


def parse_score_json(text: str) -> dict[str, Any]:
    """`{"reasoning": str, "score": 1-5}`: strict, then fenced or embedded JSON, then a final \\boxed{N}."""
    stripped = text.strip()
    try:
        obj = json.loads(stripped)
        if isinstance(obj, dict):
            return {**_score_object(obj), "parse": "strict"}
    except (json.JSONDecodeError, ParseError):
        pass
    candidates = [m.group(1) for m in _FENCE.finditer(stripped)] + [stripped]
    for chunk in candidates:
        for obj in reversed(_json_objects(chunk)):
            try:
                return {**_score_object(obj), "parse": "tolerant"}
            except ParseError:
                continue
    boxed = _BOXED.findall(stripped)
    if boxed and stripped.endswith("}"):
        reasoning = _BOXED.sub("", stripped).strip()
        return {"reasoning": reasoning, "score": _score_value(boxed[-1]), "parse": "boxed"}
    raise ParseError("no score object in the answer")


def parse_caption(text: str) -> dict[str, Any]:
    """A difference caption is free text; empty or runaway answers are failures."""
    caption = text.strip()
    if not caption:
        raise ParseError("empty caption")
    if len(caption) > MAX_CAPTION_CHARS:
        raise ParseError(f"caption longer than {MAX_CAPTION_CHARS} characters")
    return {"caption": caption}


SCORE_JSON = Parser("score_json", "1", parse_score_json)
CAPTION_TEXT = Parser("caption_text", "1", parse_caption)
