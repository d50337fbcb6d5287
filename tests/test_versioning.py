"""Content hashes fed a slice at a time are those of the whole NDJSON text (hand-written here)."""

import hashlib

import polars as pl
import pytest

from firm_assets.curation import versioning
from firm_assets.curation.versioning import frame_version

NDJSON = '{"a":1,"b":"x"}\n{"a":2,"b":null}\n{"a":3,"b":"z"}\n{"a":4,"b":"w"}\n{"a":5,"b":"v"}\n'


@pytest.mark.parametrize("hash_rows", [1, 2, 50_000])
def test_version_is_the_sha256_of_column_names_and_ndjson_whatever_the_slice(
    monkeypatch: pytest.MonkeyPatch, hash_rows: int
) -> None:
    monkeypatch.setattr(versioning, "HASH_ROWS", hash_rows)
    frame = pl.DataFrame({"a": [3, 1, 2, 5, 4], "b": ["z", "x", None, "v", "w"]})
    expected = hashlib.sha256(("a,b" + NDJSON).encode()).hexdigest()[:32]
    assert frame_version(frame, "a") == expected
    assert frame_version(frame.head(0)) == hashlib.sha256(b"a,b").hexdigest()[:32]


def test_non_ascii_and_escapes_are_hashed_as_the_utf8_of_polars_ndjson() -> None:
    frame = pl.DataFrame({"a": [1], "b": ['é " \n \\']})
    ndjson = '{"a":1,"b":"é \\" \\n \\\\"}\n'
    assert frame_version(frame) == hashlib.sha256(("a,b" + ndjson).encode("utf-8")).hexdigest()[:32]
