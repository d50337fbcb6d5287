"""Reading user files line by line without ever crashing on content: each bad line becomes a
`Quarantined` record with its raw text and a reason. Both chains' importers build on this."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_TEXT_CHARS = 2000
MAX_RAW_CHARS = 2000
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Quarantined:
    """A line that could not be imported, kept with its raw text so a person can fix it."""

    source: str
    locator: str
    raw: str
    reason: str

    def as_row(self) -> tuple[str, str, str, str]:
        return (self.source, self.locator, self.raw, self.reason)


class BadLine(Exception):
    """This line is quarantined for `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) for every line; a UTF-8 BOM and CRLF endings are accepted."""
    data = path.read_bytes().removeprefix(_UTF8_BOM)
    for number, line in enumerate(data.split(b"\n"), start=1):
        yield number, line.removesuffix(b"\r")


def decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadLine("not valid UTF-8") from None


def quarantined(path: Path, locator: str, raw: bytes, reason: str) -> Quarantined:
    """A quarantine record keeping at most MAX_RAW_CHARS of the raw input, decoded leniently."""
    return Quarantined(str(path), locator, raw.decode("utf-8", errors="replace")[:MAX_RAW_CHARS], reason)


def load_json_object(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise BadLine(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadLine("malformed JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise BadLine(f"not a JSON object (got {type(record).__name__})")
    return record


def clean_text(value: object, name: str) -> str:
    """A stripped string of bounded length, or BadLine."""
    if not isinstance(value, str):
        raise BadLine(f"{name} must be a string, got {type(value).__name__}")
    text = value.strip()
    if len(text) > MAX_TEXT_CHARS:
        raise BadLine(f"{name} too long: {len(text)} chars > {MAX_TEXT_CHARS}")
    return text
