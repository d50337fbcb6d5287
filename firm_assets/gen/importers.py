"""Import text-to-image prompts from the formats users already have, deduplicated by normalised text.

- a JSON list of objects with `input_prompt` (or `prompt`, `caption`, `text`), or of strings;
- plain text, one prompt a line;
- GenEval-style metadata JSONL: `tag`, `include` [{class, count, color?, position?}], `exclude`, `prompt`
  (its `include`/`exclude` are a ground-truth checklist, kept for coverage checks).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firm_assets.curation.lines import (
    BadLine,
    Quarantined,
    clean_text,
    decode_line,
    load_json_object,
    quarantined,
    raw_lines,
)

PROMPT_KEYS = ("input_prompt", "prompt", "caption", "text")


@dataclass(frozen=True)
class GenPrompt:
    prompt_id: str
    prompt: str
    source: str
    locator: str
    tag: str | None = None
    geneval: str | None = None  # canonical JSON of {"include": [...], "exclude": [...]}


def normalise(prompt: str) -> str:
    """Case, spacing and trailing punctuation do not make a prompt new."""
    return re.sub(r"\s+", " ", prompt.lower()).strip().rstrip(".!;, ")


def prompt_id_for(prompt: str) -> str:
    return hashlib.sha256(normalise(prompt).encode()).hexdigest()[:16]


def _prompt_text(value: object, name: str = "prompt") -> str:
    text = clean_text(value, name)
    if not text:
        raise BadLine(f"empty {name}")
    return text


def _from_object(record: dict[str, Any]) -> str:
    for key in PROMPT_KEYS:
        if key in record:
            return _prompt_text(record[key], key)
    raise BadLine(f"no prompt key (one of {', '.join(PROMPT_KEYS)})")


def _geneval_items(value: object, name: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadLine(f"{name} must be a list")
    items = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("class"), str) or not item["class"].strip():
            raise BadLine(f"{name} item without a class")
        count = item.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise BadLine(f"{name} item {item['class']!r} has a bad count")
        items.append(item)
    return items


def _geneval(record: dict[str, Any]) -> str:
    include = _geneval_items(record.get("include"), "include")
    if not include:
        raise BadLine("GenEval line with an empty include list")
    exclude = _geneval_items(record.get("exclude"), "exclude")
    return json.dumps({"include": include, "exclude": exclude}, sort_keys=True)


def _jsonl_prompt(text: str, source: str, locator: str) -> GenPrompt:
    record = load_json_object(text)
    prompt = _from_object(record)
    geneval = _geneval(record) if "include" in record else None
    tag = record.get("tag") if isinstance(record.get("tag"), str) else None
    return GenPrompt(prompt_id_for(prompt), prompt, source, locator, tag, geneval)


def _text_prompt(text: str, source: str, locator: str) -> GenPrompt:
    prompt = _prompt_text(text)
    return GenPrompt(prompt_id_for(prompt), prompt, source, locator)


def _parse_lines(
    path: Path, to_prompt: Callable[[str, str, str], GenPrompt]
) -> list[tuple[str, bytes, GenPrompt | BadLine]]:
    """Line formats (plain text, JSONL): one prompt or one quarantine reason per non-blank line."""
    parsed: list[tuple[str, bytes, GenPrompt | BadLine]] = []
    for number, line in raw_lines(path):
        locator = f"line {number}"
        try:
            text = decode_line(line)
            if text.strip():
                parsed.append((locator, line, to_prompt(text, str(path), locator)))
        except BadLine as bad:
            parsed.append((locator, line, bad))
    return parsed


def _parse_json_list(path: Path) -> list[tuple[str, bytes, GenPrompt | BadLine]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as error:
        return [("file", path.read_bytes(), BadLine(f"unreadable JSON file: {error}"))]
    if not isinstance(data, list):
        return [("file", path.read_bytes(), BadLine("a JSON prompt file must hold a list"))]
    parsed = []
    for index, entry in enumerate(data):
        raw = json.dumps(entry, ensure_ascii=False).encode()
        try:
            prompt = _prompt_text(entry) if isinstance(entry, str) else None
            if prompt is None:
                if not isinstance(entry, dict):
                    raise BadLine(f"entry is a {type(entry).__name__}, not an object or a string")
                prompt = _from_object(entry)
            parsed.append(
                (f"item {index}", raw, GenPrompt(prompt_id_for(prompt), prompt, str(path), f"item {index}"))
            )
        except BadLine as bad:
            parsed.append((f"item {index}", raw, bad))
    return parsed


def read_prompts(path: Path) -> tuple[list[GenPrompt], list[Quarantined], int]:
    """Prompts (first occurrence of each normalised text), quarantined entries, duplicates dropped."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        entries = _parse_json_list(path)
    else:
        entries = _parse_lines(path, _jsonl_prompt if suffix == ".jsonl" else _text_prompt)
    prompts: list[GenPrompt] = []
    bad: list[Quarantined] = []
    seen: set[str] = set()
    duplicates = 0
    for locator, raw, result in entries:
        if isinstance(result, BadLine):
            bad.append(quarantined(path, locator, raw, result.reason))
        elif result.prompt_id in seen:
            duplicates += 1
        else:
            seen.add(result.prompt_id)
            prompts.append(result)
    return prompts, bad, duplicates
