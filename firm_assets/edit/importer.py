"""Import FIRM-style edit requests from JSONL, quarantining every bad line with a reason.

Users bring their own `{"prompt", "image", "requirement"?}` JSONL files; one broken line must
not stop the rest from being curated, so the importer never raises on input: every non-blank line
becomes a request or a quarantine row, and a file that cannot be read is one quarantine row. The
text rules (encoding, line ends, control characters) are `firm_assets.curation.lines`'s. Whether
the referenced images exist and decode is checked later (`firm_assets.curation.images`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firm_assets.curation.lines import (
    BadLine,
    Quarantined,
    attempt,
    clean_text,
    json_records,
    path_text,
    quarantined,
    required_text,
    storable,
)


@dataclass(frozen=True)
class EditRequest:
    """One edit request: source image, instruction, optional requirement, pre-edited candidates,
    and the line it came from (so a rejected image can be traced back to it)."""

    request_id: str
    instruction: str
    requirement: str | None
    image: str
    edited_images: tuple[str, ...]
    source: str
    line: int


def read_edit_requests(jsonl: Path) -> tuple[list[EditRequest], list[Quarantined]]:
    """Requests and quarantine rows: one or the other for every non-blank line of `jsonl` (a
    repeated request points at its first line), or one row for a file that cannot be read."""
    requests: list[EditRequest] = []
    bad: list[Quarantined] = []
    first_line_of: dict[str, int] = {}
    for number, line, record in json_records(jsonl, bad):
        request = attempt(_request, record, storable(str(jsonl)), number)
        if isinstance(request, EditRequest) and request.request_id in first_line_of:
            request = BadLine(f"duplicate of line {first_line_of[request.request_id]}")
        if isinstance(request, BadLine):
            bad.append(quarantined(jsonl, f"line {number}", line, request.reason))
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


def _request(record: dict[str, Any], source: str, number: int) -> EditRequest:
    """Turn one line's JSON object into a request; `BadLine` for anything wrong."""
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
        source=source,
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
    return required_text(value, "instruction")


def _optional_text(record: dict[str, Any], key: str) -> str | None:
    """Absent, null or blank (whitespace and zero-width characters only) all mean 'no requirement'."""
    value = record.get(key)
    if value is None:
        return None
    return clean_text(value, key) or None


def _path(value: object, name: str) -> str:
    if value is None:
        raise BadLine(f"missing {name}")
    return path_text(value, name)


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
