"""Reading user files unit by unit without ever failing an import: each bad line, record or file
becomes a `Quarantined` row with its raw text and a reason. Both chains' importers and the
FIRM-Bench importer build on this, so they share one policy:

- Whole file: anything wrong with the file itself (missing, unreadable, a directory, a symlink
  loop, a name longer than the filesystem allows, undecodable UTF-16/32) is one quarantine row
  with locator "file".
- Encoding: UTF-8 with or without a BOM; UTF-16 and UTF-32 are recognised by their BOM and
  decoded. Without a BOM a file is UTF-8, so a BOM-less UTF-16 file's NUL bytes quarantine its
  lines instead of reaching a model.
- Lines: split on "\\n" only (never `str.splitlines`, which also splits on \\x0b, \\x1c, U+2028
  ...), so "line N" is the line an editor shows as N. A "\\r" right before "\\n" or at the end of
  the file belongs to the line ending; any other "\\r" is a control character and quarantines the
  line (a CR-only file from old Mac tools comes out as one quarantined line). A BOM at the start
  of a line (files concatenated with their BOMs) is dropped. Blank lines are skipped.
- Text is really text: no NUL or other control character (tab and newline aside), no lone UTF-16
  surrogate (a JSON "\\ud800" escape), and not empty once whitespace, zero-width characters
  (U+200B-U+200D, U+2060) and BOMs (U+FEFF) are removed.
- Anything else that goes wrong while reading one unit, e.g. a JSON document nested deeper than
  Python recurses, becomes that unit's quarantine row (`attempt`).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

MAX_TEXT_CHARS = 2000
MAX_RAW_CHARS = 2000
FILE_LOCATOR = "file"
# UTF-32 first: its little-endian BOM starts with the UTF-16 one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
_EDGES = re.compile(rf"^[\s{_INVISIBLE}]+|[\s{_INVISIBLE}]+$")
# C0 and C1 controls and DEL except tab (\x09) and newline (\x0a), and lone surrogates.
_FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")

T = TypeVar("T")


@dataclass(frozen=True)
class Quarantined:
    """A unit that could not be imported, kept with its raw text so a person can fix it."""

    source: str
    locator: str
    raw: str
    reason: str

    def as_row(self) -> tuple[str, str, str, str]:
        """The quarantine table row for this rejected line."""
        return (self.source, self.locator, self.raw, self.reason)


class BadLine(Exception):
    """This unit (line, record or whole file) is quarantined for `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def attempt(read: Callable[..., T], *args: Any) -> T | BadLine:
    """`read(*args)` for one unit; any exception becomes that unit's `BadLine`, so no input can
    fail the import as a whole."""
    try:
        return read(*args)
    except BadLine as bad:
        return bad
    except RecursionError:
        return BadLine("nested too deeply to read")
    except Exception as error:  # input of any shape must not fail the other units
        return BadLine(f"could not be read: {type(error).__name__}: {error}")


def read_lines(path: Path) -> list[tuple[int, bytes]]:
    """(1-based line number, UTF-8 bytes) for every line, "\\r\\n" endings removed; `BadLine` for a
    problem with the whole file."""
    data = read_file(path)
    if _bom_codec(data):
        data = decode_file(data).encode("utf-8")
    lines = data.removeprefix(codecs.BOM_UTF8).split(b"\n")
    return [(number, line.removesuffix(b"\r")) for number, line in enumerate(lines, start=1)]


def read_file(path: Path) -> bytes:
    """The file's bytes, or `BadLine` saying in plain words why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadLine("file not found") from None
    except IsADirectoryError:
        raise BadLine("a directory, not a file") from None
    except OSError as error:  # symlink loops, names too long, permissions, I/O errors
        raise BadLine(f"cannot read the file: {error.strerror or error}") from None
    except ValueError as error:  # a NUL byte or an unencodable character in the path
        raise BadLine(f"invalid file path: {error}") from None


def decode_file(data: bytes) -> str:
    """A whole file as text: UTF-16/32 by their BOM, else UTF-8 (a UTF-8 BOM is dropped)."""
    codec = _bom_codec(data)
    try:
        return data.decode(codec) if codec else data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        name = (codec or "utf-8").upper()
        raise BadLine(f"not valid {name} (byte {error.start + 1} of the file)") from None


def _bom_codec(data: bytes) -> str | None:
    return next((codec for bom, codec in _BOMS if data.startswith(bom)), None)


def decode_line(line: bytes) -> str:
    """One line as text, a leading BOM dropped; `BadLine` if it is not UTF-8 or holds control
    characters (tab aside)."""
    try:
        text = line.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise BadLine(f"not valid UTF-8 (byte {error.start + 1} of the line)") from None
    check_characters(text, "line")
    return text


def is_blank(text: str) -> bool:
    """Only whitespace: a blank line, skipped rather than quarantined."""
    return not text.strip()


def check_characters(text: str, name: str) -> None:
    """`BadLine` naming the first character that is not text: a control character other than tab
    and newline, or a lone surrogate."""
    found = _FORBIDDEN.search(text)
    if found is None:
        return
    char, where = found.group(), found.start() + 1
    if char == "\x00":
        raise BadLine(f"{name} contains a NUL character (character {where})")
    if char == "\r":
        raise BadLine(f"{name} contains a carriage return not followed by a newline (character {where})")
    if "\ud800" <= char <= "\udfff":
        raise BadLine(f"{name} contains a lone surrogate U+{ord(char):04X}, not valid Unicode")
    raise BadLine(f"{name} contains control character U+{ord(char):04X} (character {where})")


def clean_text(value: object, name: str) -> str:
    """A string of bounded length with no control characters, stripped of edge whitespace and
    zero-width characters; "" when nothing else is left. `BadLine` otherwise."""
    if not isinstance(value, str):
        raise BadLine(f"{name} must be a string, got {type(value).__name__}")
    check_characters(value, name)
    text = _EDGES.sub("", value)
    if len(text) > MAX_TEXT_CHARS:
        raise BadLine(f"{name} too long: {len(text)} chars > {MAX_TEXT_CHARS}")
    return text


def required_text(value: object, name: str) -> str:
    """`clean_text` that must leave something visible."""
    text = clean_text(value, name)
    if not text:
        raise BadLine(f"empty {name} (nothing left once whitespace and zero-width characters are removed)")
    return text


def path_text(value: object, name: str) -> str:
    """A file path field: a non-blank string with no control characters, so a bad one quarantines
    its line instead of failing later. Where it points is checked when the file is read."""
    if not isinstance(value, str):
        raise BadLine(f"{name} must be a string path, got {type(value).__name__}")
    check_characters(value, f"{name} path")
    if not value.strip():
        raise BadLine(f"empty {name} path")
    return value


def load_json_object(text: str) -> dict[str, Any]:
    """Parses one input line as a JSON object, or rejects the line with the reason."""
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise BadLine(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadLine("malformed JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise BadLine(f"not a JSON object (got {type(record).__name__})")
    return record


def quarantined(path: Path, locator: str, raw: bytes | str, reason: str) -> Quarantined:
    """A quarantine row keeping at most MAX_RAW_CHARS of the raw input, decoded leniently and with
    anything the warehouse cannot store (lone surrogates) escaped."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
    return Quarantined(storable(str(path)), locator, storable(text[:MAX_RAW_CHARS]), storable(reason))


def json_records(path: Path, bad: list[Quarantined]) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """(line number, raw line, JSON object) for each non-blank line of a JSONL file; each bad line,
    or the whole file when it cannot be read, is appended to `bad` as it is reached, so a caller that
    iterates and records its own rejects as it goes keeps `bad` in file order."""
    lines = attempt(read_lines, path)
    if isinstance(lines, BadLine):
        bad.append(file_quarantined(path, lines.reason))
        return
    for number, line in lines:
        record = attempt(_json_record, line)
        if isinstance(record, BadLine):
            bad.append(quarantined(path, f"line {number}", line, record.reason))
        elif record is not None:
            yield number, line, record


def _json_record(line: bytes) -> dict[str, Any] | None:
    text = decode_line(line)
    return None if is_blank(text) else load_json_object(text)


def file_quarantined(path: Path, reason: str) -> Quarantined:
    """The one quarantine row for a file that could not be read at all."""
    return quarantined(path, FILE_LOCATOR, b"", reason)


def storable(text: str) -> str:
    """`text` with lone surrogates (from a non-UTF-8 file name, say) escaped, so DuckDB takes it."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")
