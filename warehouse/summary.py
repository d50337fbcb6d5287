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
SELECT h.bench, h.judge, h.judge_kind, h.dimension, h.mae, h.mae_ci_low, h.mae_ci_high, h.mae_expectation,
       h.parse_failure_rate, h.constant_predictions, e.mae AS mae_execution, c.mae AS mae_consistency
FROM bench_leaderboard h
LEFT JOIN bench_leaderboard e ON e.dagster_run_id = h.dagster_run_id AND e.bench = h.bench
    AND e.judge = h.judge AND e.dimension = 'execution'
LEFT JOIN bench_leaderboard c ON c.dagster_run_id = h.dagster_run_id AND c.bench = h.bench
    AND c.judge = h.judge AND c.dimension = 'consistency'
WHERE h.dagster_run_id = ? AND h.dimension IN ('overall', 'instruction')
ORDER BY h.bench,
    CASE h.judge_kind WHEN 'trained' THEN 0 WHEN 'constant' THEN 1 WHEN 'base' THEN 2 ELSE 3 END, h.judge
"""


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def headline_lines(warehouse: Warehouse, run_id: str) -> list[str]:
    """Per side, each judge's headline MAE with its interval (the edit overall with the two MAEs it
    is the mean of), the constant baseline included."""
    lines = []
    for row in warehouse.query(HEADLINE, [run_id]).iter_rows(named=True):
        parts = f"execution={_number(row['mae_execution'])} consistency={_number(row['mae_consistency'])} "
        flag = " constant-predictions" if row["constant_predictions"] else ""
        lines.append(
            f"  {row['bench']:4} {row['dimension']:11} {row['judge_kind']:8} {row['judge']:32}"
            f" MAE={_number(row['mae'])} CI=[{_number(row['mae_ci_low'])}, {_number(row['mae_ci_high'])}] "
            + (parts if row["dimension"] == "overall" else "")
            + f"MAE(expectation)={_number(row['mae_expectation'])}"
            f" parse_failures={row['parse_failure_rate']:.0%}{flag}"
        )
    return lines


def print_summary(result: ExecuteInProcessResult, dagster_home: str) -> None:
    """Prints a run's outcome, checks and warehouse tables after `firm run`."""
    warehouse = Warehouse(warehouse_path(), read_only=True)
    print(f"run {result.run_id}: {'success' if result.success else 'FAILED'}")
    for check in result.get_asset_check_evaluations():
        verdict = (
            "passed" if check.passed else ("warn" if check.severity == AssetCheckSeverity.WARN else "FAILED")
        )
        print(f"  check {check.check_name:32} {verdict}")
    for label, sql in COUNTS.items():
        print(f"  {label:24} {warehouse.rows(sql)[0][0]}")
    board = headline_lines(warehouse, result.run_id)
    if board:
        print("FIRM-Bench (tiny models: these numbers prove the machinery, not quality)")
        print("\n".join(board))
    print(f"FIRM_HOME:        {firm_home()}")
    print(f"DuckDB warehouse: {warehouse_path()}")
    print(f"MLflow store:     {default_tracking_uri()}")
    print(f"Dagster UI:       DAGSTER_HOME={dagster_home} .venv/bin/dagster dev   (http://127.0.0.1:3000)")
    print(f"MLflow UI:        .venv/bin/mlflow ui --backend-store-uri {default_tracking_uri()} --workers 1")
