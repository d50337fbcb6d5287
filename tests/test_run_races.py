"""Two races between concurrent runs: the IO manager's retention must not drop rows a running run
still needs, and two runs publishing the same dataset version must both succeed on one folder."""

import threading
from pathlib import Path

import polars as pl
from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    asset,
    instance_for_test,
    materialize,
)

from firm_assets.curation.dataset import _write_folder
from resources.warehouse_resource import RUNS_KEPT, WarehouseIOManager, _needed_runs
from warehouse.connection import Warehouse

GATE_ENTERED = threading.Event()
GATE_OPEN = threading.Event()


@asset
def numbers(context: AssetExecutionContext) -> pl.DataFrame:
    return pl.DataFrame({"made_by": [context.run_id]})


@asset(deps=[numbers])
def gate() -> pl.DataFrame:
    """Holds the long run between writing `numbers` and loading it again downstream."""
    GATE_ENTERED.set()
    assert GATE_OPEN.wait(timeout=300)
    return pl.DataFrame({"open": [True]})


@asset
def reader(numbers: pl.DataFrame, gate: pl.DataFrame) -> pl.DataFrame:
    return numbers


def test_a_long_run_keeps_its_input_rows_while_newer_runs_write(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    resources = {"io_manager": WarehouseIOManager(path=str(path))}
    with instance_for_test() as instance:
        outcome = {}

        def long_run() -> None:
            outcome["result"] = materialize([numbers, gate, reader], instance=instance, resources=resources)

        thread = threading.Thread(target=long_run)
        thread.start()
        assert GATE_ENTERED.wait(timeout=300)
        short = [materialize([numbers], instance=instance, resources=resources) for _ in range(RUNS_KEPT + 2)]
        assert all(result.success for result in short)
        GATE_OPEN.set()
        thread.join(timeout=300)
        long = outcome["result"]
        assert long.success
        warehouse = Warehouse(path)
        # the long run's downstream step read its own `numbers`, not a newer run's
        made_by = warehouse.rows(
            "SELECT made_by FROM asset_rows.reader WHERE _dagster_run_id = ?", [long.run_id]
        )
        assert made_by == [(long.run_id,)]
        # the runs that had finished were pruned meanwhile; the long run's rows go once it is finished
        assert materialize([numbers], instance=instance, resources=resources).success
        kept = {
            run_id for (run_id,) in warehouse.rows("SELECT run_id FROM asset_runs WHERE asset = 'numbers'")
        }
        assert len(kept) == RUNS_KEPT and long.run_id not in kept


def test_needed_runs_are_unfinished_runs_and_what_they_re_execute() -> None:
    with DagsterInstance.ephemeral() as instance:
        for run_id, status, parent in [
            ("done", DagsterRunStatus.SUCCESS, None),
            ("failed", DagsterRunStatus.FAILURE, None),
            ("retry", DagsterRunStatus.STARTED, "failed"),
            ("starting", DagsterRunStatus.STARTING, None),
        ]:
            instance.add_run(
                DagsterRun(
                    job_name="j", run_id=run_id, status=status, parent_run_id=parent, root_run_id=parent
                )
            )
        assert _needed_runs(instance) == {"retry", "failed", "starting"}


def _race(n: int, action) -> list[BaseException]:
    """Run `action` in n threads released together; the errors they raised."""
    start, errors = threading.Barrier(n), []

    def attempt() -> None:
        start.wait()
        try:
            action()
        except BaseException as error:  # collected for the caller's assertion
            errors.append(error)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_racing_publishers_leave_one_complete_version_folder(tmp_path: Path) -> None:
    frame = pl.DataFrame({"sample_id": ["a", "b"], "score": [1, 5]})
    for round_ in range(5):
        folder = tmp_path / f"v{round_}"
        assert _race(4, lambda target=folder: _write_folder(target, frame, [], {}, [])) == []
        assert pl.read_parquet(folder / "data.parquet").equals(frame)
        # no temporary folder is left beside the version
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"v{round_}")) == [f"v{round_}"]
