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
    bench_digest,
    bench_labels_changed,
    critic_registered,
    new_critic_versions,
    record_run_failures,
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


def test_new_critic_versions() -> None:
    assert new_critic_versions({}, {"a": 1}) == {"a": 1}
    assert new_critic_versions({"a": 2}, {"a": 2, "b": 1}) == {"b": 1}
    assert new_critic_versions({"a": 3}, {"a": 2}) == {}


def test_critic_registry_sensor_benches_each_new_version_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resources = {"tracking": TrackingResource(tracking_uri=uri)}
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    weights = tmp_path / "weights"
    weights.mkdir()
    client.create_registered_model("firm_edit_critic")
    client.create_model_version("firm_edit_critic", str(weights))

    context = build_sensor_context(resources=resources)
    first = critic_registered(context)
    assert isinstance(first, SkipReason) and "first tick" in first.skip_message
    assert json.loads(context.cursor) == {"firm_edit_critic": 1}
    assert isinstance(
        critic_registered(build_sensor_context(cursor=context.cursor, resources=resources)), SkipReason
    )

    client.create_model_version("firm_edit_critic", str(weights))
    after = build_sensor_context(cursor=context.cursor, resources=resources)
    request = critic_registered(after)
    assert isinstance(request, RunRequest)
    assert request.run_key == "firm_edit_critic:v2" and request.asset_selection == [BENCH_RESULTS]
    assert isinstance(
        critic_registered(build_sensor_context(cursor=after.cursor, resources=resources)), SkipReason
    )


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
