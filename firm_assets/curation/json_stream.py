"""JSON arrays and JSON Lines files read one value at a time, with each value's byte span, so a file
of hundreds of thousands of records is never whole in memory (the critic trainer's record index,
the released-data importer). Torch-free: the importer runs in the Dagster process."""

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from firm_assets.curation.sharegpt import ExportContractError

_CHUNK = 1 << 20
_BETWEEN_VALUES = " \t\r\n,"


def json_values(path: Path, chunk_size: int = _CHUNK) -> Iterator[tuple[int, int, Any]]:
    """Each element of the JSON array in `path` (or each value of a JSON Lines file) with its byte
    span [start, end), reading one chunk at a time so the file is never whole in memory."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    text, position, offset = "", 0, 0  # offset: the byte offset of text[position] in the file
    started = opened = False
    with path.open("rb") as file:
        while True:
            skipped = len(text) - position - len(text[position:].lstrip(_BETWEEN_VALUES))
            position, offset = position + skipped, offset + skipped  # separators are ASCII: 1 byte each
            if position == len(text):
                chunk = file.read(chunk_size)
                if not chunk:
                    return
                text, position = utf8.decode(chunk), 0
                continue
            if not started:
                started = opened = text[position] == "["
                if opened:
                    position, offset = position + 1, offset + 1
                    continue
                started = True
            if opened and text[position] == "]":
                if text[position + 1 :].strip() or file.read().strip():
                    raise ExportContractError(f"{path.name}: data after the closing bracket")
                return
            try:
                value, end = decoder.raw_decode(text, position)
            except json.JSONDecodeError as error:
                chunk = file.read(chunk_size)
                if not chunk:
                    raise ExportContractError(f"{path.name} at byte {offset}: {error.msg}") from None
                text, position = text[position:] + utf8.decode(chunk), 0
                continue
            size = len(text[position:end].encode("utf-8"))
            yield offset, offset + size, value
            position, offset = end, offset + size
            if position > chunk_size:
                text, position = text[position:], 0
