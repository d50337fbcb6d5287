"""Content hashes of asset outputs: the DataVersion that keeps unchanged downstream assets fresh."""

from __future__ import annotations

import hashlib

import polars as pl


def frame_version(frame: pl.DataFrame, sort_by: str | None = None) -> str:
    """sha256 of the rows as NDJSON in a canonical order (and the column names): equal rows, equal version."""
    if sort_by and frame.height:
        frame = frame.sort(sort_by)
    digest = hashlib.sha256(",".join(frame.columns).encode())
    digest.update(frame.write_ndjson().encode())
    return digest.hexdigest()[:32]


def short_hash(*parts: object) -> str:
    """A 16-hex id from its parts, for sample and candidate ids."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]
