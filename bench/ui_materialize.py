"""The UI's "Materialize all" against `firm run main`, side by side, and the code location's load time.

`firm run main` on a fresh FIRM_HOME, then, on another fresh FIRM_HOME, `dagster dev` serving
workspace.yaml and the main job's assets (with their checks) launched over the webserver's GraphQL API
as the UI's Materialize button launches a selection (the implicit asset job, the code location's
default executor, the daemon dequeuing the run). The main job leaves out the inbox group (partitioned
by file, run by its sensors), so the launch does too; before timing, the bench stops unless the
launched assets and checks are exactly the main job's. Tiny models are built once and shared.
materialize_all_s is from the launch request to the run's SUCCESS; cli_s the wall time of the
`firm run main` process; target ratio <= 1.5. code_location_s is the median of 3 fresh
`import firm_assets.definitions`.
Prints `UI materialize_all_s=... cli_s=... ratio=... step_processes=...` and `LOAD code_location_s=...`.

  python bench/ui_materialize.py
  python bench/ui_materialize.py --check-selection   # only start `dagster dev` and compare the selection
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "FIRM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def cli_seconds(home: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "firm_assets.cli", "run", "main"],
        cwd=REPO,
        env=_env(home),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"firm run main failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall


def main_job_nodes(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The asset nodes whose launch does `firm run main`'s work; the bench stops when there are none
    such (the webserver lists other assets or checks than the main job's definition selects)."""
    from dagster_dev import job_nodes

    try:
        return job_nodes(nodes, "main")
    except ValueError as error:
        raise SystemExit(f"the UI launch cannot match `firm run main`: {error}") from None


def check_selection(home: Path) -> None:
    """The dry step: start `dagster dev`, build the launch's selection, compare it, launch nothing."""
    from dagster_dev import DagsterDev, asset_path, node_selection

    dev = DagsterDev(home, home / "dagster-dev.log")
    try:
        nodes = dev.wait_ready()
    finally:
        dev.stop()
    selected = node_selection(main_job_nodes(nodes))
    left_out = sorted("/".join(asset_path(node)) for node in nodes if asset_path(node) not in selected.assets)
    print(
        f"SELECTION assets={len(selected.assets)} checks={len(selected.checks)} left_out={','.join(left_out)}"
    )


def ui_seconds(home: Path) -> tuple[float, int]:
    """Seconds from the launch of the main job's selection to the run's success, and how many processes
    ran steps."""
    from dagster_dev import DagsterDev, step_processes

    dev = DagsterDev(home, home / "dagster-dev.log")
    try:
        nodes = main_job_nodes(dev.wait_ready())
        started = time.perf_counter()
        run_id = dev.launch_assets(nodes)
        status = dev.wait_run(run_id, timeout_s=1800)
        wall = time.perf_counter() - started
    finally:
        dev.stop()
    if status != "SUCCESS":
        raise SystemExit(f"the UI run ended {status}; log: {home / 'dagster-dev.log'}")
    return wall, step_processes(home / "dagster", run_id)


def load_seconds() -> float:
    """Median of 3 fresh interpreter imports of the code location (what every code server and run
    worker pays at start-up)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import firm_assets.definitions"],
            cwd=REPO,
            env=_env(Path(tempfile.mkdtemp(prefix="firm-bench-load-"))),
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check-selection",
        action="store_true",
        help="only compare the UI launch's selection with the main job's",
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="firm-bench-ui-"))
    os.environ["FIRM_HOME"] = str(base / "shared")
    if args.check_selection:
        check_selection(base / "ui")
        return

    from resources.models import ensure_tiny_models

    tiny = ensure_tiny_models()
    homes = {name: base / name for name in ("cli", "ui")}
    for home in homes.values():
        (home / "models").mkdir(parents=True)
        (home / "models" / "tiny").symlink_to(tiny)

    cli_s = cli_seconds(homes["cli"])
    ui_s, processes = ui_seconds(homes["ui"])
    ratio = ui_s / cli_s
    print(f"UI materialize_all_s={ui_s:.1f} cli_s={cli_s:.1f} ratio={ratio:.2f} step_processes={processes}")
    print(f"LOAD code_location_s={load_seconds():.2f}")


if __name__ == "__main__":
    main()
