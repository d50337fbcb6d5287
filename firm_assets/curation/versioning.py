"""Content hashes of asset outputs: the DataVersion that keeps unchanged downstream assets fresh."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import polars as pl

HASH_ROWS = 50_000  # rows serialised at a time: the NDJSON of 370K rows would be GiBs at once


def frame_version(frame: pl.DataFrame, sort_by: str | None = None) -> str:
    """sha256 of the rows as NDJSON in a canonical order (and the column names): equal rows, equal
    version. Fed HASH_ROWS rows at a time; the digest is that of the whole NDJSON text."""
    if sort_by and frame.height:
        frame = frame.sort(sort_by)
    digest = hashlib.sha256(",".join(frame.columns).encode())
    buffer = io.BytesIO()
    for part in frame.iter_slices(HASH_ROWS):
        buffer.seek(0)
        buffer.truncate()
        part.write_ndjson(buffer)  # the UTF-8 bytes straight from polars, never a Python str
        with buffer.getbuffer() as written:
            digest.update(written)
    return digest.hexdigest()[:32]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks (a released data file can be GiBs): the content hash
    that names an imported file (inbox run keys, `inbox_files`, released-data versions)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def short_hash(*parts: object) -> str:
    """A 16-hex id from its parts, for sample and candidate ids."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]
