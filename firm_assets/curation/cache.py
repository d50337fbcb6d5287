"""The per-sample inference cache: look up by content key, compute misses in batches, commit each
batch in its own transaction as soon as it completes.

Every model call in the project goes through `run_cached`, so "unchanged samples are never sent to
a model twice" holds everywhere, and a run killed mid-stage loses nothing it committed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from resources.chat import ModelRef
from warehouse.connection import Warehouse


@dataclass(frozen=True)
class CallSpec:
    """Everything about a call that is not the sample: it is hashed into every key."""

    stage: str
    model: ModelRef
    template_ref: str
    parser_ref: str
    decoding: dict[str, Any]

    def key(self, inputs: dict[str, Any]) -> str:
        material = {
            "model": self.model.model_id,
            "revision": self.model.revision,
            "template": self.template_ref,
            "parser": self.parser_ref,
            "decoding": self.decoding,
            "inputs": inputs,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CacheItem:
    """One sample to process: its id, the content that identifies the call, and what compute needs."""

    sample_id: str
    inputs: dict[str, Any]
    payload: Any


@dataclass
class Outcome:
    """A call's result: parsed fields when ok, else a recorded failure (never a default value)."""

    output_text: str | None
    parsed: dict[str, Any] | None
    failure: str | None = None
    attempts: int = 1
    model_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class StageStats:
    rows: int = 0
    cache_hits: int = 0
    model_calls: int = 0
    failures: int = 0
    model_seconds: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, float | int]:
        return {
            "rows": self.rows,
            "cache_hits": self.cache_hits,
            "model_calls": self.model_calls,
            "parse_failures": self.failures,
            "model_seconds": round(self.model_seconds, 3),
            **self.extra,
        }


@dataclass(frozen=True)
class CachedResult:
    cache_key: str
    outcome: Outcome


ComputeBatch = Callable[[list[Any]], list[Outcome]]


def _lookup(warehouse: Warehouse, keys: list[str]) -> dict[str, Outcome]:
    if not keys:
        return {}
    with warehouse.transaction() as con:
        rows = con.execute(
            "SELECT cache_key, output_text, parsed, failure, attempts, model_seconds"
            " FROM inference_cache WHERE cache_key IN (SELECT unnest(?))",
            [keys],
        ).fetchall()
    return {
        key: Outcome(text, json.loads(parsed) if parsed else None, failure, attempts, seconds)
        for key, text, parsed, failure, attempts, seconds in rows
    }


def _commit(
    warehouse: Warehouse, spec: CallSpec, batch: list[tuple[str, CacheItem, Outcome]], run_id: str | None
) -> None:
    rows = [
        (
            key,
            spec.stage,
            spec.model.model_id,
            spec.model.revision,
            spec.template_ref.split("@")[0],
            spec.template_ref.split("@", 1)[1] if "@" in spec.template_ref else "",
            json.dumps(spec.decoding, sort_keys=True),
            item.sample_id,
            out.output_text,
            json.dumps(out.parsed) if out.parsed is not None else None,
            out.ok,
            out.failure,
            out.attempts,
            out.model_seconds,
            run_id,
        )
        for key, item, out in batch
    ]
    with warehouse.transaction() as con:
        con.executemany(
            "INSERT INTO inference_cache (cache_key, stage, model_id, model_revision, template_id,"
            " template_version, decoding, sample_id, output_text, parsed, ok, failure, attempts,"
            " model_seconds, dagster_run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            rows,
        )


def run_cached(
    warehouse: Warehouse,
    spec: CallSpec,
    items: Sequence[CacheItem],
    compute: ComputeBatch,
    batch_size: int,
    run_id: str | None = None,
) -> tuple[dict[str, CachedResult], StageStats]:
    """Results by sample id; misses are computed `batch_size` at a time and committed per batch."""
    keyed = [(spec.key(item.inputs), item) for item in items]
    cached = _lookup(warehouse, sorted({key for key, _ in keyed}))
    stats = StageStats(rows=len(keyed))
    results: dict[str, CachedResult] = {}
    misses: dict[str, CacheItem] = {}
    for key, item in keyed:
        if key in cached:
            stats.cache_hits += 1
            results[item.sample_id] = CachedResult(key, cached[key])
        elif key not in misses:
            misses[key] = item
    pending = list(misses.items())
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        outcomes = compute([item.payload for _, item in batch])
        if len(outcomes) != len(batch):
            raise RuntimeError(f"{spec.stage}: compute returned {len(outcomes)} outcomes for {len(batch)}")
        _commit(
            warehouse,
            spec,
            [(key, item, out) for (key, item), out in zip(batch, outcomes, strict=True)],
            run_id,
        )
        stats.model_calls += len(batch)
        stats.model_seconds += sum(out.model_seconds for out in outcomes)
        for (key, _), out in zip(batch, outcomes, strict=True):
            cached[key] = out
    for key, item in keyed:
        results.setdefault(item.sample_id, CachedResult(key, cached[key]))
    stats.failures = sum(1 for result in results.values() if not result.outcome.ok)
    return results, stats
