"""Gates on FIRM-Bench evaluation: label conflicts, contamination, and trained beats base and constant."""

import numpy as np
import polars as pl
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, asset_check

from firm_assets.benchmark.items import CONFLICT_REASON, firm_bench_edit, firm_bench_gen
from firm_assets.benchmark.results import HEADLINE, OVERALL_DIMENSIONS, bench_results
from firm_assets.benchmark.stats import constant_predictor, item_errors, mae, mae_margin
from firm_assets.critics.released import IMAGE_SHAS, USER_TEXT
from resources.warehouse_resource import WarehouseResource
from warehouse.connection import Warehouse

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
    """Flags editing bench items whose duplicate copies carry different human labels."""
    return _conflicts("firm_bench_edit", warehouse, context.run.run_id)


@asset_check(asset=firm_bench_gen, description="No generation item carries conflicting human labels.")
def firm_bench_gen_label_conflicts(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    """Flags generation bench items whose duplicate copies carry different human labels."""
    return _conflicts("firm_bench_gen", warehouse, context.run.run_id)


def contaminated_items(warehouse: Warehouse, dataset: str, dataset_version: str) -> list[str]:
    """Bench items whose image hash or text appears in the training data of a dataset version."""
    parquet = warehouse.rows(
        "SELECT parquet_path FROM dataset_versions WHERE dataset = ? AND version = ?",
        [dataset, dataset_version],
    )[0][0]
    bench = warehouse.query(f"SELECT item_id, text, image_shas FROM assets.{BENCH_TABLES[dataset]}")
    if USER_TEXT in pl.read_parquet_schema(parquet):
        # a version imported from released files: its images by hash, and its prompts are whole user
        # turns, so a bench text is in the training data when a prompt contains it
        training = pl.read_parquet(parquet, columns=[IMAGE_SHAS, USER_TEXT])
        shas = set(training[IMAGE_SHAS].explode().drop_nulls())
        wanted = sorted({t.strip().lower() for t in bench["text"]} - {""})
        found = training[USER_TEXT].str.to_lowercase().str.extract_many(wanted, overlapping=True)
        texts = set(found.explode().drop_nulls()) if wanted else set()
    else:
        sha_columns, text_column = TRAINING_KEYS[dataset]
        training = pl.read_parquet(parquet, columns=[*sha_columns, text_column])
        shas = set().union(*(set(training[c]) for c in sha_columns))
        texts = {t.strip().lower() for t in training[text_column]}
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
    """Fails when a judged critic was trained on data that overlaps the bench it is scored on."""
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


def headline_errors(predictions: pl.DataFrame, bench: str, judge: str) -> np.ndarray:
    """One judge's per-item errors on a side's headline (dims x items, NaN where unparsed), items in
    item_id order: execution and consistency for the edit overall, instruction for gen."""
    dimensions = OVERALL_DIMENSIONS if HEADLINE[bench] == "overall" else (HEADLINE[bench],)
    mine = predictions.filter((pl.col("bench") == bench) & (pl.col("judge") == judge))
    return np.stack(
        [
            item_errors(*mine.filter(pl.col("dimension") == d).sort("item_id").select("text_score", "human"))
            for d in dimensions
        ]
    )


def compare(
    trained: np.ndarray, reference: np.ndarray, constant: bool = False, seed: int = 0, n_boot: int = 1000
) -> dict:
    """Whether a trained critic beats a reference judge on the headline MAE: the MAE margin
    (reference - trained) with a paired bootstrap 95% interval, and beating means the whole interval
    is above 0. A trained critic without parsed answers, or with more parse failures than the
    reference (its MAE would cover only the items it could answer), never beats; a reference without
    parsed answers is beaten on parse failures alone (there is no MAE to compare; the verdict says so).
    A `constant` trained critic (zero-variance predictions) never beats: whatever its margin, it
    only found a number near the bench's labels."""
    result = mae_margin(trained, reference, seed, n_boot)
    if constant:
        return {**result, "beats": False, "why": "the trained critic's predictions are constant"}
    if mae(trained) is None:
        return {**result, "beats": False, "why": "the trained critic parsed no answer"}
    if mae(reference) is None:
        return {**result, "beats": True, "why": "the reference parsed no answer: parse failures only"}
    mine, theirs = (float(np.isnan(e).any(axis=0).mean()) for e in (trained, reference))
    if mine > theirs:
        return {**result, "beats": False, "why": f"more parse failures ({mine:.0%} vs {theirs:.0%})"}
    beats = result["ci_low"] > 0
    return {**result, "beats": beats, "why": "margin CI above 0" if beats else "margin CI reaches 0"}


@asset_check(
    asset=bench_results,
    description="Each trained critic beats the untrained base and the constant baseline (median training "
    "label) on the headline MAE, by a margin whose paired bootstrap CI is above 0; warns when there "
    "is nothing to compare.",
)
def trained_critic_beats_base(bench_results: pl.DataFrame) -> AssetCheckResult:
    """The headline claim: each trained critic agrees with humans better than its base model."""
    verdicts, missing = {}, []
    for bench in HEADLINE:
        kinds = (
            bench_results.filter(pl.col("bench") == bench)
            .group_by("judge_kind")
            .agg(pl.col("judge").unique())
        )
        by_kind = {row["judge_kind"]: sorted(row["judge"]) for row in kinds.iter_rows(named=True)}
        for kind in ("trained", "base", "constant"):
            if not by_kind.get(kind):
                missing.append(f"{bench}: no {kind} judge")
        references = by_kind.get("base", []) + by_kind.get("constant", [])
        for trained in by_kind.get("trained", []):
            constant = _constant(bench_results, bench, trained)
            for reference in references:
                verdicts[f"{bench}/{trained} vs {reference}"] = compare(
                    headline_errors(bench_results, bench, trained),
                    headline_errors(bench_results, bench, reference),
                    constant,
                )
    return AssetCheckResult(
        passed=bool(verdicts) and not missing and all(v["beats"] for v in verdicts.values()),
        severity=AssetCheckSeverity.WARN,
        metadata={
            **{k: _describe(v) for k, v in verdicts.items()},
            "nothing_to_compare": "; ".join(missing) or "-",
        },
    )


def _constant(predictions: pl.DataFrame, bench: str, judge: str) -> bool:
    """Whether a judge's text scores have zero variance on every headline dimension."""
    dimensions = OVERALL_DIMENSIONS if HEADLINE[bench] == "overall" else (HEADLINE[bench],)
    mine = predictions.filter((pl.col("bench") == bench) & (pl.col("judge") == judge))
    return all(
        constant_predictor(mine.filter(pl.col("dimension") == d)["text_score"].to_list()) for d in dimensions
    )


def _describe(verdict: dict) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:+.3f}"

    interval = f"[{number(verdict['ci_low'])}, {number(verdict['ci_high'])}]"
    outcome = "beats" if verdict["beats"] else "does not beat"
    return f"{outcome}: MAE margin {number(verdict['margin'])} CI {interval} ({verdict['why']})"
