"""Inbox folders: the sensors turn files into dynamic partitions with run keys; the partitioned
assets import one file each (or a range in one run) into the warehouse."""

import hashlib
import json
from pathlib import Path

import pytest
from dagster import SensorResult, SkipReason, build_sensor_context, instance_for_test, materialize

from firm_assets.edit.inbox import EDIT_INBOX, edit_inbox_requests
from firm_assets.edit.requests import edit_requests, with_inbox_rows
from firm_assets.gen.inbox import GEN_INBOX, gen_inbox_prompts
from firm_assets.gen.prompts import gen_prompts
from resources.warehouse_resource import WarehouseResource
from sensors.inbox import edit_inbox_files, gen_inbox_files, inbox_run_key
from warehouse.connection import Warehouse


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FIRM_EDIT_INBOX", raising=False)
    monkeypatch.delenv("FIRM_GEN_INBOX", raising=False)
    return tmp_path / "home"


@pytest.fixture
def instance():
    with instance_for_test() as temporary:
        yield temporary


def _tick(sensor, instance, cursor: str | None) -> SensorResult | SkipReason:
    """One sensor evaluation; added partitions are applied to the instance, as the daemon does."""
    result = sensor(build_sensor_context(instance=instance, cursor=cursor))
    if isinstance(result, SensorResult):
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(home: Path, sql: str) -> list[tuple]:
    with Warehouse(home / "warehouse.duckdb").transaction() as con:
        return con.execute(sql).fetchall()


def test_edit_inbox_sensor_partitions_run_keys_and_changes(home: Path, instance) -> None:
    inbox = home / "inbox" / "edit"
    assert "no inbox folder" in _tick(edit_inbox_files, instance, None).skip_message
    inbox.mkdir(parents=True)
    first, second = inbox / "a.jsonl", inbox / "b.jsonl"
    first.write_text('{"prompt": "add a hat", "image": "x.png"}\n')
    second.write_text('{"prompt": "remove the cup", "image": "y.png"}\n')
    (inbox / "notes.md").write_text("not a request file")
    (inbox / "bad name.jsonl").write_text('{"prompt": "p", "image": "z.png"}\n')

    result = _tick(edit_inbox_files, instance, None)
    assert isinstance(result, SensorResult)
    assert instance.get_dynamic_partitions(EDIT_INBOX.partitions.name) == ["a.jsonl", "b.jsonl"]
    assert [(r.partition_key, r.run_key) for r in result.run_requests] == [
        ("a.jsonl", f"a.jsonl@{_sha(first)}"),
        ("b.jsonl", f"b.jsonl@{_sha(second)}"),
    ]
    assert json.loads(result.cursor) == {"a.jsonl": _sha(first), "b.jsonl": _sha(second)}

    again = _tick(edit_inbox_files, instance, result.cursor)
    assert isinstance(again, SkipReason) and "bad name.jsonl" in again.skip_message

    second.write_text('{"prompt": "remove the red cup", "image": "y.png"}\n')
    changed = _tick(edit_inbox_files, instance, result.cursor)
    assert isinstance(changed, SensorResult) and changed.dynamic_partitions_requests == []
    [request] = changed.run_requests
    assert request.partition_key == "b.jsonl"
    assert request.run_key == inbox_run_key("b.jsonl", _sha(second)) != result.run_requests[1].run_key
    assert instance.get_dynamic_partitions(EDIT_INBOX.partitions.name) == ["a.jsonl", "b.jsonl"]


def test_edit_inbox_asset_imports_one_file_and_replaces_it_when_changed(home: Path, instance) -> None:
    inbox = home / "inbox" / "edit"
    inbox.mkdir(parents=True)
    requests = inbox / "a.jsonl"
    requests.write_text('{"prompt": "add a hat", "image": "x.png"}\nnot json\n')
    instance.add_dynamic_partitions(EDIT_INBOX.partitions.name, ["a.jsonl"])
    resources = {"warehouse": WarehouseResource()}

    result = materialize(
        [edit_inbox_requests], partition_key="a.jsonl", instance=instance, resources=resources
    )
    assert result.success
    assert _rows(home, "SELECT file, instruction, line FROM inbox_edit_requests") == [
        ("a.jsonl", "add a hat", 1)
    ]
    assert _rows(home, "SELECT inbox, file, sha256, n_rows, quarantined FROM inbox_files") == [
        ("edit", "a.jsonl", _sha(requests), 1, 1)
    ]
    assert _rows(home, "SELECT asset, locator FROM quarantine") == [("inbox_edit_requests", "line 2")]

    requests.write_text('{"prompt": "add a red hat", "image": "x.png"}\n')
    assert materialize(
        [edit_inbox_requests], partition_key="a.jsonl", instance=instance, resources=resources
    ).success
    assert _rows(home, "SELECT instruction FROM inbox_edit_requests") == [("add a red hat",)]
    assert _rows(home, "SELECT sha256, n_rows, quarantined FROM inbox_files") == [(_sha(requests), 1, 0)]


def test_gen_inbox_backfill_imports_a_range_of_files_in_one_run(home: Path, instance) -> None:
    inbox = home / "inbox" / "gen"
    inbox.mkdir(parents=True)
    (inbox / "p1.txt").write_text("a red cube\nA red cube.\na blue ball\n")
    (inbox / "p2.json").write_text(json.dumps([{"prompt": "two cats"}, "a dog"]))
    result = _tick(gen_inbox_files, instance, None)
    assert [r.partition_key for r in result.run_requests] == ["p1.txt", "p2.json"]
    assert instance.get_dynamic_partitions(GEN_INBOX.partitions.name) == ["p1.txt", "p2.json"]

    # BackfillPolicy.single_run(): a backfill over both partitions is one run importing both files
    run = materialize(
        [gen_inbox_prompts],
        instance=instance,
        resources={"warehouse": WarehouseResource()},
        tags={
            "dagster/asset_partition_range_start": "p1.txt",
            "dagster/asset_partition_range_end": "p2.json",
        },
    )
    assert run.success
    assert _rows(home, "SELECT file, prompt FROM inbox_gen_prompts ORDER BY file, locator") == [
        ("p1.txt", "a red cube"),
        ("p1.txt", "a blue ball"),
        ("p2.json", "two cats"),
        ("p2.json", "a dog"),
    ]
    assert _rows(home, "SELECT file, n_rows, quarantined, dagster_run_id FROM inbox_files ORDER BY file") == [
        ("p1.txt", 2, 1, run.run_id),
        ("p2.json", 2, 0, run.run_id),
    ]
    materializations = run.asset_materializations_for_node("gen_inbox_prompts")
    assert sorted(m.partition for m in materializations) == ["p1.txt", "p2.json"]
    assert {m.metadata["files"].value for m in materializations} == {2}


def _request(request_id: str, source: str, line: int) -> dict:
    return {
        "request_id": request_id,
        "instruction": "add a hat",
        "image": "x.png",
        "source": source,
        "line": line,
    }


def test_with_inbox_rows_keeps_first_occurrences_and_quarantines_repeats() -> None:
    configured = [_request("r1", "/data/requests.jsonl", 1)]
    inbox = [
        _request("r2", "/inbox/a.jsonl", 1),
        _request("r1", "/inbox/a.jsonl", 2),
        _request("r2", "/inbox/b.jsonl", 4),
    ]
    kept, repeats = with_inbox_rows(configured, inbox)
    assert [(r["request_id"], r["source"]) for r in kept] == [
        ("r1", "/data/requests.jsonl"),
        ("r2", "/inbox/a.jsonl"),
    ]
    assert [(q.source, q.locator, q.reason) for q in repeats] == [
        ("/inbox/a.jsonl", "line 2", "duplicate of /data/requests.jsonl line 1"),
        ("/inbox/b.jsonl", "line 4", "duplicate of /inbox/a.jsonl line 1"),
    ]
    assert json.loads(repeats[0].raw) == {"prompt": "add a hat", "image": "x.png"}
    assert with_inbox_rows(configured, []) == (configured, [])


def _import_dropped(sensor, asset, instance) -> None:
    """What the daemon does with a dropped file: the sensor's tick, then the run it requests."""
    [request] = _tick(sensor, instance, None).run_requests
    resources = {"warehouse": WarehouseResource()}
    assert materialize(
        [asset], partition_key=request.partition_key, instance=instance, resources=resources
    ).success


def _entry_run(asset, instance, config: dict):
    result = materialize(
        [asset],
        instance=instance,
        resources={"warehouse": WarehouseResource()},
        run_config={"ops": {asset.key.to_user_string(): {"config": config}}},
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node(asset.key.to_user_string())
    return result.asset_value(asset.key), materialization


def test_a_dropped_edit_file_reaches_edit_requests_once(home: Path, instance, tmp_path: Path) -> None:
    configured = tmp_path / "requests.jsonl"
    configured.write_text('{"prompt": "add a hat", "image": "x.png"}\n')
    inbox = home / "inbox" / "edit"
    inbox.mkdir(parents=True)
    dropped = inbox / "a.jsonl"
    dropped.write_text(
        '{"prompt": "remove the cup", "image": "y.png", "requirement": "keep the table"}\n'
        '{"prompt": "add a hat", "image": "x.png"}\n'  # the configured file's request again
        "not json\n"
    )
    before, first = _entry_run(edit_requests, instance, {"requests_path": str(configured)})
    assert before["instruction"].to_list() == ["add a hat"]
    _import_dropped(edit_inbox_files, edit_inbox_requests, instance)

    frame, materialization = _entry_run(edit_requests, instance, {"requests_path": str(configured)})
    assert frame.select("instruction", "requirement", "line").rows() == [
        ("add a hat", None, 1),
        ("remove the cup", "keep the table", 1),
    ]
    new = frame.row(1, named=True)
    assert (new["images_root"], new["source"]) == (str(inbox.resolve()), str(inbox.resolve() / "a.jsonl"))
    assert json.loads(materialization.metadata["inbox_files"].value) == {"a.jsonl": _sha(dropped)}
    # the repeat is quarantined by the entry asset, pointing at the first; the bad line by the import
    assert _rows(
        home, "SELECT asset, locator, reason LIKE 'duplicate of%' FROM quarantine ORDER BY asset"
    ) == [
        ("edit_requests", "line 2", True),
        ("inbox_edit_requests", "line 3", False),
    ]
    assert _rows(home, "SELECT reason FROM quarantine WHERE asset = 'edit_requests'") == [
        (f"duplicate of {configured} line 1",)
    ]

    again, rerun = _entry_run(edit_requests, instance, {"requests_path": str(configured)})
    assert again.equals(frame)  # a re-run adds nothing
    versions = [m.metadata["data_version"].value for m in (first, materialization, rerun)]
    assert versions[0] != versions[1] == versions[2]


def test_a_dropped_prompt_file_reaches_gen_prompts_once(home: Path, instance, tmp_path: Path) -> None:
    configured = tmp_path / "prompts.txt"
    configured.write_text("a red cube\n")
    inbox = home / "inbox" / "gen"
    inbox.mkdir(parents=True)
    (inbox / "p.txt").write_text("A red cube.\na green cone\n")
    (inbox / "q.txt").write_text("a green cone\n")  # the same prompt in a later inbox file
    _, before = _entry_run(gen_prompts, instance, {"prompt_files": [str(configured)]})
    assert before.metadata["rows"].value == 1
    run = _tick(gen_inbox_files, instance, None)
    assert [r.partition_key for r in run.run_requests] == ["p.txt", "q.txt"]
    resources = {"warehouse": WarehouseResource()}
    for request in run.run_requests:
        assert materialize(
            [gen_inbox_prompts], partition_key=request.partition_key, instance=instance, resources=resources
        ).success

    frame, materialization = _entry_run(gen_prompts, instance, {"prompt_files": [str(configured)]})
    assert sorted(frame.select("prompt", "source").rows()) == [
        ("a green cone", str(inbox / "p.txt")),
        ("a red cube", str(configured)),
    ]
    assert json.loads(materialization.metadata["inbox_files"].value) == {"p.txt": _sha(inbox / "p.txt")}
    assert materialization.metadata["duplicates"].value == 2
    assert sorted(_rows(home, "SELECT source, reason FROM quarantine WHERE asset = 'gen_prompts'")) == [
        (str(inbox / "p.txt"), f"duplicate of {configured} line 1"),
        (str(inbox / "q.txt"), f"duplicate of {inbox / 'p.txt'} line 2"),
    ]
    again, _ = _entry_run(gen_prompts, instance, {"prompt_files": [str(configured)]})
    assert again.equals(frame)
