"""`firm_bench_edit` and `firm_bench_gen`: FIRM-Bench items with human labels, imported from the
published layout (a local path) or, by default, the demo bench drawn by the project."""

import json
import os
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, AssetsDefinition, Config, Output, asset
from pydantic import Field

from firm_assets.benchmark.demo import write_demo_bench
from firm_assets.benchmark.importer import BenchItem, LabelConflict, bench_version, read_firm_bench
from firm_assets.curation.records import record_quarantine
from firm_assets.curation.stage_asset import versioned_output
from resources.home import firm_home
from resources.warehouse_resource import WarehouseResource

GROUP = "bench"
BENCH_ENV = "FIRM_BENCH_ROOT"
CONFLICT_REASON = "conflicting human labels"
HUMAN_DIMENSIONS = {"edit": ("execution", "consistency"), "gen": ("instruction",)}


class BenchConfig(Config):
    """Where the bench items come from, so a run can point at the real FIRM-Bench."""

    root: str = Field(
        default="",
        description=f"FIRM-Bench folder (<root>/edit, <root>/gen); empty: ${BENCH_ENV}, else the demo.",
    )


def bench_root(config: BenchConfig) -> Path:
    """Resolves the bench folder: config, then environment, else a freshly written demo bench."""
    chosen = config.root or os.environ.get(BENCH_ENV, "")
    return Path(chosen) if chosen else write_demo_bench(firm_home() / "demo" / "bench")


def _frame(side: str, items: list[BenchItem], version: str) -> pl.DataFrame:
    schema = {
        "item_id": pl.String,
        "text": pl.String,
        "images": pl.List(pl.String),
        "image_shas": pl.List(pl.String),
        "category": pl.String,
        "editor": pl.String,
        **{f"human_{d}": pl.Float64 for d in HUMAN_DIMENSIONS[side]},
        **({"item_labels": pl.String} if side == "gen" else {}),  # JSON [{question, answer}] or null
        "bench_version": pl.String,
    }
    rows = [
        {
            "item_id": item.item_id,
            "text": item.text,
            "images": list(item.images),
            "image_shas": list(item.image_shas),
            "category": item.category,
            "editor": item.editor,
            **{f"human_{d}": item.human[d] for d in HUMAN_DIMENSIONS[side]},
            **({"item_labels": _item_labels_json(item)} if side == "gen" else {}),
            "bench_version": version,
        }
        for item in items
    ]
    return pl.DataFrame(rows, schema=schema).sort("item_id")


def _item_labels_json(item: BenchItem) -> str | None:
    labels = [{"question": question, "answer": answer} for question, answer in item.item_labels]
    return json.dumps(labels) if labels else None


def import_side(
    context: AssetExecutionContext, side: str, config: BenchConfig, warehouse: WarehouseResource
) -> Output[pl.DataFrame]:
    """Shared import of one bench side, so both bench assets read, quarantine and record alike."""
    root = bench_root(config)
    items, bad, conflicts = read_firm_bench(root, side, store=firm_home() / "images")
    rows = [q.as_row() for q in bad] + [_conflict_row(root, c) for c in conflicts]
    quarantined = record_quarantine(warehouse.get(), f"firm_bench_{side}", rows, context.run_id)
    version = bench_version(items)
    frame = _frame(side, items, version)
    return versioned_output(
        frame,
        version,
        {
            "quarantined": quarantined,
            "label_conflicts": len(conflicts),
            "bench_version": version,
            "root": str(root),
        },
    )


def _conflict_row(root: Path, conflict: LabelConflict) -> tuple[str, str, str, str]:
    values = ", ".join(str(v) for v in conflict.values)
    return (str(root), f"item {conflict.item_id}", f"{conflict.dimension}: {values}", CONFLICT_REASON)


def bench_side_asset(side: str, code_version: str, description: str) -> AssetsDefinition:
    """`firm_bench_<side>`: the human-labelled bench items of one side that critics are measured
    against, imported by `import_side`."""

    @asset(
        name=f"firm_bench_{side}",
        group_name=GROUP,
        code_version=code_version,
        kinds={"duckdb"},
        description=description,
    )
    def _bench_items(
        context: AssetExecutionContext, config: BenchConfig, warehouse: WarehouseResource
    ) -> Output[pl.DataFrame]:
        return import_side(context, side, config, warehouse)

    return _bench_items


firm_bench_edit = bench_side_asset(
    "edit",
    "firm_bench_importer@1",
    "FIRM-Bench edit items (source, instruction, edited image) with human execution and "
    "consistency scores; bad items quarantined, conflicting labels excluded and reported.",
)
firm_bench_gen = bench_side_asset(
    "gen",
    "firm_bench_importer@2",
    "FIRM-Bench generation items (prompt, image) with human instruction-following scores "
    "and, where given, checklist labels (question + yes/no).",
)
