"""Operations sensors: bench labels and registered critic versions re-run the bench; failed runs
land in the warehouse's run_failures table."""

import json
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    RunRequest,
    SkipReason,
    build_run_status_sensor_context,
    build_sensor_context,
    instance_for_test,
    job,
    op,
)
from mlflow import MlflowClient

from resources.tracking import TrackingResource
from resources.warehouse_resource import WarehouseResource
from sensors.operations import (
    BENCH_RESULTS,
    RegisteredVersion,
    bench_digest,
    bench_labels_changed,
    critic_registered,
    new_versions,
    record_run_failures,
    sort_versions,
)
from warehouse.connection import Warehouse


def _bench(root: Path, labels: str) -> None:
    (root / "edit" / "result").mkdir(parents=True, exist_ok=True)
    (root / "edit" / "bench_v1.jsonl").write_text('{"id": 1}\n')
    (root / "edit" / "result" / "human_bench_v1.jsonl").write_text(labels)


def test_bench_digest_covers_labels_and_file_names(tmp_path: Path) -> None:
    _bench(tmp_path / "a", '{"id": 1, "score": 3}\n')
    _bench(tmp_path / "b", '{"id": 1, "score": 3}\n')
    assert bench_digest(tmp_path / "a") == bench_digest(tmp_path / "b")
    _bench(tmp_path / "b", '{"id": 1, "score": 4}\n')
    assert bench_digest(tmp_path / "a") != bench_digest(tmp_path / "b")
    (tmp_path / "a" / "edit").rename(tmp_path / "a" / "FIRM-Bench-Edit")  # same bytes, other layout
    assert bench_digest(tmp_path / "a") != bench_digest(tmp_path / "b")


def test_bench_labels_sensor_records_first_then_runs_on_new_labels(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FIRM_BENCH_ROOT", raising=False)
    assert "FIRM_BENCH_ROOT" in bench_labels_changed(build_sensor_context()).skip_message
    _bench(tmp_path, '{"id": 1, "score": 3}\n')
    monkeypatch.setenv("FIRM_BENCH_ROOT", str(tmp_path))
    context = build_sensor_context()
    first = bench_labels_changed(context)
    assert isinstance(first, SkipReason) and "first tick" in first.skip_message
    assert context.cursor == bench_digest(tmp_path)
    assert isinstance(bench_labels_changed(build_sensor_context(cursor=context.cursor)), SkipReason)
    _bench(tmp_path, '{"id": 1, "score": 3}\n{"id": 2, "score": 5}\n')
    request = bench_labels_changed(build_sensor_context(cursor=context.cursor))
    assert isinstance(request, RunRequest)
    assert request.run_key == f"{context.cursor}->{bench_digest(tmp_path)}"


def test_new_versions_are_above_the_seen_or_still_pending() -> None:
    registry = [RegisteredVersion("a", n, True) for n in (1, 2, 3)] + [RegisteredVersion("b", 1, False)]
    assert new_versions(registry, {}, []) == registry
    assert [str(v) for v in new_versions(registry, {"a": 2, "b": 1}, [])] == ["a:v3"]
    assert [str(v) for v in new_versions(registry, {"a": 3, "b": 1}, ["a:v2"])] == ["a:v2"]


def test_sort_versions_by_lineage_and_who_registered() -> None:
    found = [
        RegisteredVersion("a", 1, True),
        RegisteredVersion("a", 2, True),
        RegisteredVersion("a", 3, False),
    ]
    bench, waiting, unbenchable = sort_versions(found, {("a", 1), ("b", 2)})
    assert [str(v) for v in bench] == ["a:v1"]
    assert [str(v) for v in waiting] == ["a:v2"]  # the asset registered it; its row is not written yet
    assert [str(v) for v in unbenchable] == ["a:v3"]  # registered by hand: no lineage
    # a hand-registered version that somehow has a warehouse row is benched like any other
    assert sort_versions(found[2:], {("a", 3)}) == (found[2:], [], [])


def _lineage(wh: Warehouse, model_version: str) -> None:
    """The warehouse row a critic asset writes for the registered version `model_version`."""
    with wh.transaction() as con:
        con.execute(
            "INSERT INTO critics (critic, version, base_model, base_revision, dataset, dataset_version,"
            " recipe, path, revision, registered_model, model_version)"
            " VALUES ('firm_edit_critic', ?, 'base', 'r', 'firm_edit', 'd1', '{}', '/x', 'r',"
            " 'firm_edit_critic', ?)",
            [f"critic{model_version}", model_version],
        )


def test_critic_registry_sensor_benches_versions_with_lineage_and_names_the_others(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    wh_path = tmp_path / "warehouse.duckdb"
    resources = {
        "tracking": TrackingResource(tracking_uri=uri),
        "warehouse": WarehouseResource(path=str(wh_path)),
    }
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    weights = tmp_path / "weights"
    weights.mkdir()
    client.create_registered_model("firm_edit_critic")
    client.create_model_version("firm_edit_critic", str(weights))  # v1, by hand

    def tick(cursor: str | None):
        context = build_sensor_context(cursor=cursor, resources=resources)
        return critic_registered(context), context.cursor

    first, cursor = tick(None)
    assert isinstance(first, SkipReason) and "first tick" in first.skip_message
    assert json.loads(cursor) == {"seen": {"firm_edit_critic": 1}, "pending": []}
    assert tick(cursor)[0].skip_message == "no new critic version in the registry"

    # v2 as the critic asset registers it (tagged), before it has written its warehouse row; no
    # warehouse file exists yet either
    client.create_model_version("firm_edit_critic", str(weights), tags={"critic_version": "critic2"})
    waiting, cursor = tick(cursor)
    assert isinstance(waiting, SkipReason) and not wh_path.exists()
    assert "waiting for the warehouse lineage of firm_edit_critic:v2" in waiting.skip_message
    assert json.loads(cursor)["pending"] == ["firm_edit_critic:v2"]

    # v3 registered by hand: named once, never benched
    client.create_model_version("firm_edit_critic", str(weights))
    both, cursor = tick(cursor)
    assert isinstance(both, SkipReason)
    assert "not benched: firm_edit_critic:v3 registered without a critic asset" in both.skip_message
    assert "firm_edit_critic:v2" in both.skip_message

    # the asset writes v2's lineage: now it is benched, and v3 is not mentioned again
    _lineage(Warehouse(wh_path), "2")
    request, cursor = tick(cursor)
    assert isinstance(request, RunRequest)
    assert request.run_key == "firm_edit_critic:v2" and request.asset_selection == [BENCH_RESULTS]
    assert json.loads(cursor) == {"seen": {"firm_edit_critic": 3}, "pending": []}
    assert tick(cursor)[0].skip_message == "no new critic version in the registry"

    # a new version with lineage at once is benched on the next tick; a cursor written before
    # pending versions existed ({name: highest seen}) still reads
    client.create_model_version("firm_edit_critic", str(weights), tags={"critic_version": "critic4"})
    _lineage(Warehouse(wh_path), "4")
    request, _ = tick(json.dumps({"firm_edit_critic": 3}))
    assert isinstance(request, RunRequest) and request.run_key == "firm_edit_critic:v4"


@op
def explode() -> None:
    raise ValueError("the critic weights are missing")


@job
def fragile():
    explode()


@pytest.mark.parametrize("ticks", [1, 2])
def test_run_failure_sensor_records_step_and_error(tmp_path: Path, ticks: int) -> None:
    warehouse = WarehouseResource(path=str(tmp_path / "warehouse.duckdb"))
    with instance_for_test() as instance:
        result = fragile.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        [failure] = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_FAILURE).records
        for _ in range(ticks):  # evaluating the same failure again records it once
            context = build_run_status_sensor_context(
                sensor_name="record_run_failures",
                dagster_event=failure.event_log_entry.dagster_event,
                dagster_instance=instance,
                dagster_run=run,
                resources={"warehouse": warehouse},
            ).for_run_failure()
            record_run_failures(context)
    with Warehouse(tmp_path / "warehouse.duckdb").transaction() as con:
        rows = con.execute("SELECT run_id, job, step, error FROM run_failures").fetchall()
    assert rows == [(result.run_id, "fragile", "explode", "ValueError: the critic weights are missing")]
