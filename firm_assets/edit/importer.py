"""Import FIRM-style edit requests from JSONL, quarantining every bad line with a reason.

Users bring their own `{"prompt", "image", "requirement"?}` JSONL files; one broken line must
not stop the rest from being curated, so the importer never raises on content. Whether the
referenced images exist and decode is checked later (`firm_assets.curation.images`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class EditRequest:
    """One edit request: source image, instruction, optional requirement, pre-edited candidates."""

    request_id: str
    instruction: str
    requirement: str | None
    image: str
    edited_images: tuple[str, ...]
    # 1-based line in the JSONL, so image quarantine rows can point at it; where, not what.
    line: int = field(compare=False)


def read_edit_requests(jsonl: Path) -> tuple[list[EditRequest], list[Quarantined]]:
    """Parse every line of `jsonl`; raises only if the file itself cannot be read."""
    requests: list[EditRequest] = []
    bad: list[Quarantined] = []
    first_line_of: dict[str, int] = {}
    for number, line in raw_lines(jsonl):
        try:
            request = _parse_line(line, number)
            if request is None:
                continue
            if request.request_id in first_line_of:
                raise BadLine(f"duplicate of line {first_line_of[request.request_id]}")
        except BadLine as error:
            bad.append(quarantined(jsonl, f"line {number}", line, error.reason))
            continue
        first_line_of[request.request_id] = number
        requests.append(request)
    return requests, bad


def request_id_for(
    instruction: str, requirement: str | None, image: str, edited_images: tuple[str, ...]
) -> str:
    """Content-derived id, so the same request gets the same id across runs and line orders."""
    canonical = json.dumps(
        [instruction, requirement, image, list(edited_images)], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _parse_line(line: bytes, number: int) -> EditRequest | None:
    """Turn one line into a request; None for blank lines, `BadLine` for anything wrong."""
    text = decode_line(line)
    if not text.strip():
        return None
    record = load_json_object(text)
    instruction = _instruction(record)
    requirement = _optional_text(record, "requirement")
    image = _path(record.get("image"), "image")
    edited_images = _edited_images(record)
    return EditRequest(
        request_id=request_id_for(instruction, requirement, image, edited_images),
        instruction=instruction,
        requirement=requirement,
        image=image,
        edited_images=edited_images,
        line=number,
    )


def _instruction(record: dict[str, Any]) -> str:
    """`prompt` is the documented key; `instruction` is accepted as an alias."""
    prompt, alias = record.get("prompt"), record.get("instruction")
    if prompt is not None and alias is not None and prompt != alias:
        raise BadLine("both 'prompt' and 'instruction' given, with different values")
    value = prompt if prompt is not None else alias
    if value is None:
        raise BadLine("missing instruction ('prompt')")
    instruction = clean_text(value, "instruction")
    if not instruction:
        raise BadLine("empty instruction")
    return instruction


def _optional_text(record: dict[str, Any], key: str) -> str | None:
    """Absent, null or blank all mean 'no requirement'."""
    value = record.get(key)
    if value is None:
        return None
    return clean_text(value, key) or None


def _path(value: object, name: str) -> str:
    if value is None:
        raise BadLine(f"missing {name}")
    if not isinstance(value, str):
        raise BadLine(f"{name} must be a string path, got {type(value).__name__}")
    if not value.strip():
        raise BadLine(f"empty {name} path")
    return value


def _edited_images(record: dict[str, Any]) -> tuple[str, ...]:
    """Candidates come as a list under `edited_images` or a single path under `edited_image`."""
    many, one = record.get("edited_images"), record.get("edited_image")
    if many is not None and one is not None:
        raise BadLine("both 'edited_images' and 'edited_image' given")
    if one is not None:
        return (_path(one, "edited_image"),)
    if many is None:
        return ()
    if not isinstance(many, list):
        raise BadLine(f"edited_images must be a list of paths, got {type(many).__name__}")
    return tuple(_path(item, "edited_images item") for item in many)
