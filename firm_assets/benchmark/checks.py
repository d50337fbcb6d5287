"""Gates on FIRM-Bench evaluation: label conflicts, contamination, and trained-beats-base."""

import polars as pl
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, asset_check

from firm_assets.benchmark.items import CONFLICT_REASON, firm_bench_edit, firm_bench_gen
from firm_assets.benchmark.results import bench_results
from resources.warehouse_resource import WarehouseResource
from warehouse.connection import Warehouse

HEADLINE = {"edit": "overall", "gen": "instruction"}
TRAINING_KEYS = {
    "firm_edit": (["source_sha", "edited_sha"], "instruction"),
    "firm_gen": (["image_sha"], "prompt"),
}
BENCH_TABLES = {"firm_edit": "firm_bench_edit", "firm_gen": "firm_bench_gen"}


def _conflicts(asset_name: str, warehouse: WarehouseResource, run_id: str) -> AssetCheckResult:
    rows = warehouse.get().query(
        "SELECT locator, raw FROM quarantine WHERE asset = ? AND dagster_run_id = ? AND reason = ?",
        [asset_name, run_id, CONFLICT_REASON],
    )
    return AssetCheckResult(
        passed=rows.height == 0,
        metadata={"conflicts": rows.height, "items": ", ".join(rows["locator"].to_list()[:20])},
    )


@asset_check(asset=firm_bench_edit, description="No edit item carries conflicting human labels.")
def firm_bench_edit_label_conflicts(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    return _conflicts("firm_bench_edit", warehouse, context.run.run_id)


@asset_check(asset=firm_bench_gen, description="No generation item carries conflicting human labels.")
def firm_bench_gen_label_conflicts(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    return _conflicts("firm_bench_gen", warehouse, context.run.run_id)


def contaminated_items(warehouse: Warehouse, dataset: str, dataset_version: str) -> list[str]:
    """Bench items whose image hash or text appears in the training data of a dataset version."""
    parquet = warehouse.rows(
        "SELECT parquet_path FROM dataset_versions WHERE dataset = ? AND version = ?",
        [dataset, dataset_version],
    )[0][0]
    sha_columns, text_column = TRAINING_KEYS[dataset]
    training = pl.read_parquet(parquet, columns=[*sha_columns, text_column])
    shas = set().union(*(set(training[c]) for c in sha_columns))
    texts = {t.strip().lower() for t in training[text_column]}
    bench = warehouse.query(f"SELECT item_id, text, image_shas FROM assets.{BENCH_TABLES[dataset]}")
    return [
        row["item_id"]
        for row in bench.iter_rows(named=True)
        if shas.intersection(row["image_shas"]) or row["text"].strip().lower() in texts
    ]


@asset_check(
    asset=bench_results,
    description="No bench item's image or prompt is in the training data of a critic evaluated on it.",
    blocking=True,
)
def bench_contamination(warehouse: WarehouseResource, bench_results: pl.DataFrame) -> AssetCheckResult:
    wh = warehouse.get()
    judged = set(bench_results.filter(pl.col("judge_kind") == "trained")["judge"])
    critics = wh.query("SELECT critic, version, dataset, dataset_version FROM critics")
    found = {}
    for row in critics.iter_rows(named=True):
        if f"{row['critic']}@{row['version'][:8]}" in judged:
            found[f"{row['critic']}@{row['version'][:8]}"] = contaminated_items(
                wh, row["dataset"], row["dataset_version"]
            )
    return AssetCheckResult(
        passed=not any(found.values()),
        metadata={"checked_critics": len(found), **{k: len(v) for k, v in found.items()}},
    )


@asset_check(
    asset=bench_results,
    description="Each trained critic beats its untrained base on the headline dimension (parse rate, MAE).",
)
def trained_critic_beats_base(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    board = warehouse.get().query(
        "SELECT bench, judge, judge_kind, dimension, parse_failure_rate, mae, mae_expectation"
        " FROM bench_leaderboard WHERE dagster_run_id = ?",
        [context.run.run_id],
    )
    verdicts = {}
    for bench, dimension in HEADLINE.items():
        rows = board.filter((pl.col("bench") == bench) & (pl.col("dimension") == dimension))
        base = rows.filter(pl.col("judge_kind") == "base").row(0, named=True)
        for trained in rows.filter(pl.col("judge_kind") == "trained").iter_rows(named=True):
            verdicts[f"{bench}/{trained['judge']}"] = beats(trained, base)
    return AssetCheckResult(
        passed=all(verdicts.values()),
        severity=AssetCheckSeverity.WARN,
        metadata={k: "beats base" if v else "does not beat base" for k, v in verdicts.items()},
    )


def beats(trained: dict, base: dict) -> bool:
    """Fewer parse failures, and a lower MAE where both have one (text MAE, else expectation MAE)."""
    if trained["parse_failure_rate"] > base["parse_failure_rate"]:
        return False
    key = "mae" if trained["mae"] is not None and base["mae"] is not None else "mae_expectation"
    if trained[key] is None or base[key] is None:
        return trained[key] is not None
    return trained[key] < base[key]
