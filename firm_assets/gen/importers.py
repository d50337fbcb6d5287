"""Import text-to-image prompts from the formats users already have, deduplicated by normalised text.

- a JSON list of objects with `input_prompt` (or `prompt`, `caption`, `text`), or of strings;
- plain text, one prompt a line;
- GenEval-style metadata JSONL: `tag`, `include` [{class, count, color?, position?}], `exclude`, `prompt`
  (its `include`/`exclude` are a ground-truth checklist, kept for coverage checks).

Every non-blank line or list record becomes a prompt or a quarantine row; a file that cannot be
read is one quarantine row. A repeated prompt is reported on its own line, pointing at the first
occurrence (which is the one kept). The text rules are `firm_assets.curation.lines`'s.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firm_assets.curation.lines import (
    FILE_LOCATOR,
    BadLine,
    Quarantined,
    attempt,
    clean_text,
    decode_file,
    decode_line,
    is_blank,
    load_json_object,
    quarantined,
    read_file,
    read_lines,
    required_text,
    storable,
)

PROMPT_KEYS = ("input_prompt", "prompt", "caption", "text")
# GenEval's own counts go up to 5 (4 included, "not 5" excluded); beyond this a count is a typo.
MAX_GENEVAL_COUNT = 16
GENEVAL_RELATIONS = frozenset({"left of", "right of", "above", "below"})

# (locator, raw input, what it became); None for a blank line.
Entry = tuple[str, bytes | str, "GenPrompt | BadLine | None"]


@dataclass(frozen=True)
class GenPrompt:
    """One imported prompt and where it came from."""

    prompt_id: str
    prompt: str
    source: str
    locator: str
    tag: str | None = None
    geneval: str | None = None  # canonical JSON of {"include": [...], "exclude": [...]}


@dataclass
class PromptImport:
    """What importing prompt files gave: the prompts kept, entries that could not be used (including
    conflicting GenEval metadata) and repeats of a prompt kept earlier."""

    prompts: list[GenPrompt] = field(default_factory=list)
    bad: list[Quarantined] = field(default_factory=list)
    duplicates: list[Quarantined] = field(default_factory=list)
    first: dict[str, GenPrompt] = field(default_factory=dict)  # prompt id -> the prompt kept

    def add(self, path: Path, locator: str, raw: bytes | str, entry: GenPrompt | BadLine) -> None:
        """One entry, after every earlier one: kept, a repeat of a kept prompt, or bad."""
        if isinstance(entry, BadLine):
            self.bad.append(quarantined(path, locator, raw, entry.reason))
        elif entry.prompt_id not in self.first:
            self.first[entry.prompt_id] = entry
            self.prompts.append(entry)
        else:
            kept = self.first[entry.prompt_id]
            where = kept.locator if kept.source == entry.source else f"{kept.source} {kept.locator}"
            if entry.geneval is not None and kept.geneval is not None and entry.geneval != kept.geneval:
                reason = f"same prompt as {where}, with different GenEval metadata (the first is kept)"
                self.bad.append(quarantined(path, locator, raw, reason))
            else:
                self.duplicates.append(quarantined(path, locator, raw, f"duplicate of {where}"))


def normalise(prompt: str) -> str:
    """Case, spacing and trailing punctuation do not make a prompt new."""
    return re.sub(r"\s+", " ", prompt.lower()).strip().rstrip(".!;, ")


def prompt_id_for(prompt: str) -> str:
    """Stable id from the normalised text, so a prompt imported twice is one prompt."""
    return hashlib.sha256(normalise(prompt).encode()).hexdigest()[:16]


def read_prompts(path: Path) -> PromptImport:
    """One prompt file (format by suffix: .json list, .jsonl GenEval metadata, else plain text)."""
    return read_prompt_files([path])


def read_prompt_files(paths: Iterable[Path]) -> PromptImport:
    """Prompt files in order, a prompt repeated within or across them kept once (its first time)."""
    result = PromptImport()
    for path in paths:
        for locator, raw, entry in _entries(path):
            if entry is not None:
                result.add(path, locator, raw, entry)
    return result


def _entries(path: Path) -> list[Entry]:
    """Every unit of one file, or the file's one quarantine row."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        entries = attempt(_json_list_entries, path)
    else:
        entries = attempt(_line_entries, path, _jsonl_prompt if suffix == ".jsonl" else _text_prompt)
    if isinstance(entries, BadLine):
        return [(FILE_LOCATOR, b"", entries)]
    return entries


def _line_entries(path: Path, to_prompt: Callable[[str, str, str], GenPrompt]) -> list[Entry]:
    source = storable(str(path))
    return [
        (f"line {number}", line, attempt(_line_prompt, line, to_prompt, source, f"line {number}"))
        for number, line in read_lines(path)
    ]


def _line_prompt(
    line: bytes, to_prompt: Callable[[str, str, str], GenPrompt], source: str, locator: str
) -> GenPrompt | None:
    text = decode_line(line)
    return None if is_blank(text) else to_prompt(text, source, locator)


def _json_list_entries(path: Path) -> list[Entry]:
    try:
        data = json.loads(decode_file(read_file(path)))
    except ValueError as error:
        raise BadLine(f"malformed JSON file: {error}") from None
    if not isinstance(data, list):
        raise BadLine("a JSON prompt file must hold a list")
    source = storable(str(path))
    return [
        (f"record {n}", _raw_json(entry), attempt(_list_prompt, entry, source, f"record {n}"))
        for n, entry in enumerate(data, start=1)
    ]


def _raw_json(entry: object) -> str:
    """The record as the quarantine shows it; "" for one too deep to write back."""
    try:
        return json.dumps(entry, ensure_ascii=False)
    except RecursionError:
        return ""


def _list_prompt(entry: object, source: str, locator: str) -> GenPrompt:
    if isinstance(entry, str):
        prompt = required_text(entry, "prompt")
    elif isinstance(entry, dict):
        prompt = _from_object(entry)
    else:
        raise BadLine(f"entry is a {type(entry).__name__}, not an object or a string")
    return GenPrompt(prompt_id_for(prompt), prompt, source, locator)


def _jsonl_prompt(text: str, source: str, locator: str) -> GenPrompt:
    record = load_json_object(text)
    prompt = _from_object(record)
    geneval = _geneval(record) if "include" in record or "exclude" in record else None
    tag = (clean_text(record["tag"], "tag") or None) if isinstance(record.get("tag"), str) else None
    return GenPrompt(prompt_id_for(prompt), prompt, source, locator, tag, geneval)


def _text_prompt(text: str, source: str, locator: str) -> GenPrompt:
    prompt = required_text(text, "prompt")
    return GenPrompt(prompt_id_for(prompt), prompt, source, locator)


def _from_object(record: dict[str, Any]) -> str:
    for key in PROMPT_KEYS:
        if key in record:
            return required_text(record[key], key)
    raise BadLine(f"no prompt key (one of {', '.join(PROMPT_KEYS)})")


def _geneval(record: dict[str, Any]) -> str:
    """GenEval metadata validated and in canonical form: positive bounded counts, known relations
    pointing at another included object, no class listed twice, nothing both required and excluded."""
    include = _geneval_items(record.get("include"), "include")
    if not include:
        raise BadLine("GenEval line with an empty include list")
    exclude = _geneval_items(record.get("exclude"), "exclude")
    for index, item in enumerate(include):
        if "position" in item:
            _check_position(item["position"], index, len(include))
    required = {item["class"]: item.get("count", 1) for item in include}
    for item in exclude:
        if "position" in item:
            raise BadLine(f"exclude item {item['class']!r} has a position; only included objects do")
        cls, limit = item["class"], item.get("count", 1)
        if cls in required and limit <= required[cls]:
            raise BadLine(f"include asks for {required[cls]} {cls!r} but exclude forbids {limit} or more")
    return json.dumps({"include": include, "exclude": exclude}, sort_keys=True)


def _geneval_items(value: object, name: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadLine(f"{name} must be a list")
    items: list[dict[str, Any]] = []
    for number, item in enumerate(value, start=1):
        label = f"{name} item {number}"
        if not isinstance(item, dict) or "class" not in item:
            raise BadLine(f"{label} without a class")
        cls = required_text(item["class"], f"{label} class")
        if any(kept["class"] == cls for kept in items):
            raise BadLine(f"{name} lists {cls!r} twice; give one entry with its count")
        kept: dict[str, Any] = {"class": cls}
        if "count" in item:
            kept["count"] = _count(item["count"], f"{label} ({cls!r})")
        if item.get("color") is not None:
            kept["color"] = required_text(item["color"], f"{label} color")
        if item.get("position") is not None:
            kept["position"] = item["position"]
        items.append(kept)
    return items


def _count(value: object, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_GENEVAL_COUNT:
        raise BadLine(f"{label} has a bad count {value!r}: a whole number from 1 to {MAX_GENEVAL_COUNT}")
    return value


def _check_position(position: object, index: int, included: int) -> None:
    """`[relation, i]`: this object is `relation` the i-th (0-based) other included object."""
    label = f"include item {index + 1} position"
    if not isinstance(position, list) or len(position) != 2:
        raise BadLine(f"{label} must be [relation, index of another included object]")
    relation, target = position
    if not isinstance(relation, str) or relation not in GENEVAL_RELATIONS:
        known = ", ".join(sorted(GENEVAL_RELATIONS))
        raise BadLine(f"{label} has unknown relation {relation!r} (one of {known})")
    valid = isinstance(target, int) and not isinstance(target, bool) and 0 <= target < included
    if not valid or target == index:
        raise BadLine(f"{label} points at {target!r}, not the 0-based index of another included object")
