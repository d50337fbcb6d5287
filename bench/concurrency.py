"""P7: two runs started together share the model calls instead of both making them.

One `firm run JOB` process on a fresh FIRM_HOME, then two started together on another fresh FIRM_HOME
(each a real process, as a user or a sensor would start them; tiny models built once and shared).
calls_ratio = model calls of the two concurrent runs together / calls of the single run (target
<= 1.1); wall_ratio = wall time of the pair (first start to last end) / wall of the single run.
Also checks that no row was lost: each concurrent run's curated outputs equal the single run's.
Prints `P7 job=... calls_ratio=... wall_ratio=... single_s=... pair_s=... single_calls=... pair_calls=...`.

  python bench/concurrency.py --job edit_curation
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
OUTPUTS = {
    "edit_curation": ("edit_candidates", "difference_captions", "edit_scores"),
    "gen_curation": ("gen_checklists", "generated_images", "gen_scores"),
}


def start_runs(home: Path, job: str, n: int) -> tuple[float, list[str]]:
    """Start n `firm run job` processes at once on `home`; wall seconds until all end, and their logs."""
    env = {**os.environ, "FIRM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "firm_assets.cli", "run", job],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(n)
    ]
    logs = [proc.communicate()[0] for proc in procs]
    wall = time.perf_counter() - started
    failed = [log for proc, log in zip(procs, logs, strict=True) if proc.returncode != 0]
    if failed:
        raise SystemExit(f"a run failed:\n{failed[0][-3000:]}")
    return wall, logs


def calls_and_outputs(home: Path, job: str) -> tuple[int, list[dict[str, list]]]:
    """Model calls of every run in this home's Dagster instance, and each run's curated rows."""
    from dagster import DagsterInstance
    from graph_runs import run_model_calls

    from warehouse.connection import Warehouse

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        run_ids = [record.dagster_run.run_id for record in instance.get_run_records()]
        calls = sum(sum(run_model_calls(instance, run_id).values()) for run_id in run_ids)
    warehouse = Warehouse(home / "warehouse.duckdb", read_only=True)
    outputs = []
    for run_id in run_ids:
        rows = {}
        for asset in OUTPUTS[job]:
            frame = warehouse.query(f"SELECT * FROM asset_rows.{asset} WHERE _dagster_run_id = ?", [run_id])
            frame = frame.drop("_dagster_run_id")
            # stored paths differ between homes; everything else must match
            frame = frame.drop([c for c in frame.columns if c.endswith("_path")])
            rows[asset] = sorted(frame.rows(), key=repr)
        outputs.append(rows)
    return calls, outputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", choices=sorted(OUTPUTS), default="edit_curation")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="firm-bench-p7-"))
    os.environ["FIRM_HOME"] = str(base / "shared")

    from resources.models import ensure_tiny_models

    tiny = ensure_tiny_models()
    homes = {name: base / name for name in ("single", "pair")}
    for home in homes.values():
        (home / "models").mkdir(parents=True)
        (home / "models" / "tiny").symlink_to(tiny)

    single_s, _ = start_runs(homes["single"], args.job, 1)
    pair_s, _ = start_runs(homes["pair"], args.job, 2)
    single_calls, (reference,) = calls_and_outputs(homes["single"], args.job)
    pair_calls, pair_outputs = calls_and_outputs(homes["pair"], args.job)
    lost = [asset for rows in pair_outputs for asset in OUTPUTS[args.job] if rows[asset] != reference[asset]]
    print(
        f"rows per asset={ {asset: len(rows) for asset, rows in reference.items()} } lost_or_changed={lost}"
    )
    print(
        f"P7 job={args.job} calls_ratio={pair_calls / single_calls:.2f} wall_ratio={pair_s / single_s:.2f}"
        f" single_s={single_s:.1f} pair_s={pair_s:.1f} single_calls={single_calls} pair_calls={pair_calls}"
    )
    if lost:
        raise SystemExit(f"concurrent runs' outputs differ from the single run's: {lost}")


if __name__ == "__main__":
    main()
