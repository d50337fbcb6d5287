"""The short report printed after a run: counts, and where the warehouse and MLflow store are."""

from __future__ import annotations

from dagster import AssetCheckSeverity, ExecuteInProcessResult

from resources.home import firm_home, warehouse_path
from resources.tracking import default_tracking_uri
from warehouse.connection import Warehouse

COUNTS = {
    "images": "SELECT count(*) FROM images",
    "model calls cached": "SELECT count(*) FROM inference_cache",
    "failed calls": "SELECT count(*) FROM inference_cache WHERE NOT ok",
    "quarantined inputs": "SELECT count(*) FROM quarantine",
    "dataset versions": "SELECT count(*) FROM dataset_versions",
    "critic versions": "SELECT count(*) FROM critics",
}
HEADLINE = """
SELECT bench, judge, judge_kind, dimension, mae, mae_expectation, parse_failure_rate
FROM bench_leaderboard
WHERE dagster_run_id = ? AND dimension IN ('overall', 'instruction')
ORDER BY bench, judge_kind DESC, judge
"""


def print_summary(result: ExecuteInProcessResult, dagster_home: str) -> None:
    warehouse = Warehouse(warehouse_path(), read_only=True)
    print(f"run {result.run_id}: {'success' if result.success else 'FAILED'}")
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        meta = materialization.metadata
        rows = meta["rows"].value if "rows" in meta else "?"
        stage_calls = [value.value for key, value in meta.items() if key.endswith("model_calls")]
        calls = sum(stage_calls) if stage_calls else ""
        key = materialization.asset_key.to_user_string()
        print(f"  {key:24} rows={rows}" + (f" model_calls={calls}" if calls != "" else ""))
    for check in result.get_asset_check_evaluations():
        verdict = (
            "passed" if check.passed else ("warn" if check.severity == AssetCheckSeverity.WARN else "FAILED")
        )
        print(f"  check {check.check_name:32} {verdict}")
    for label, sql in COUNTS.items():
        print(f"  {label:24} {warehouse.rows(sql)[0][0]}")
    board = warehouse.rows(HEADLINE, [result.run_id])
    if board:
        print("FIRM-Bench (tiny models: these numbers prove the machinery, not quality)")
    for bench, judge, kind, dimension, mae, mae_expectation, failures in board:
        text = "-" if mae is None else f"{mae:.3f}"
        expected = "-" if mae_expectation is None else f"{mae_expectation:.3f}"
        print(
            f"  {bench:4} {dimension:11} {kind:7} {judge:32} MAE={text}"
            f" MAE(expectation)={expected} parse_failures={failures:.0%}"
        )
    print(f"FIRM_HOME:        {firm_home()}")
    print(f"DuckDB warehouse: {warehouse_path()}")
    print(f"MLflow store:     {default_tracking_uri()}")
    print(f"Dagster UI:       DAGSTER_HOME={dagster_home} .venv/bin/dagster dev   (http://127.0.0.1:3000)")
    print(f"MLflow UI:        .venv/bin/mlflow ui --backend-store-uri {default_tracking_uri()} --workers 1")
