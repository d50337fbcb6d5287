"""The graph as declared: a snapshot of every asset spec, the jobs, and the sensor's behaviour."""

import hashlib
import json
import os
from pathlib import Path

from dagster import RunRequest, SkipReason, build_sensor_context

from firm_assets.definitions import defs
from sensors.recuration import edit_requests_changed

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_specs.json"


def _specs() -> dict:
    graph = defs.resolve_asset_graph()
    specs = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        specs[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "code_version": node.code_version,
            "kinds": sorted(node.kinds),
            "checks": sorted(check.name for check in node.check_keys),
            "automation_condition": node.automation_condition.get_label()
            if node.automation_condition
            else None,
            "pools": sorted(node.pools or ()),
            "partitions": getattr(node.partitions_def, "name", None),
        }
    return specs


def test_asset_specs_match_snapshot() -> None:
    """Graph changes are deliberate: regenerate with FIRM_UPDATE_SNAPSHOTS=1 and review the diff."""
    specs = _specs()
    if os.environ.get("FIRM_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(specs, indent=2, sort_keys=True) + "\n")
    assert specs == json.loads(SNAPSHOT.read_text())


def test_jobs_and_automation_are_registered() -> None:
    jobs = {"main", "edit_curation", "gen_curation", "rl", "bench", "edit_inbox", "gen_inbox"}
    assert {job.name for job in defs.resolve_all_job_defs()} >= jobs
    schedule = defs.resolve_schedule_def("nightly_edit_recuration")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.job_name == "edit_curation"


def test_every_selection_runs_in_one_process_by_default() -> None:
    """UI buttons, backfills and sensors launch the implicit asset job: it takes the code location's
    executor, as the named jobs do (the browser test checks a UI run's steps share one process)."""
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"
    for job in ("main", "edit_curation", "gen_curation"):
        assert defs.resolve_job_def(job).executor_def.name == "in_process"


def test_sensor_fires_once_per_content_change(tmp_path: Path, monkeypatch) -> None:
    requests = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FIRM_EDIT_REQUESTS", str(requests))
    assert isinstance(edit_requests_changed(build_sensor_context()), SkipReason)
    requests.write_text('{"prompt": "0", "image": "x.png"}\n')
    # switched on: the first tick records the content as its cursor and launches nothing
    context = build_sensor_context()
    switched_on = edit_requests_changed(context)
    assert isinstance(switched_on, SkipReason) and "first tick" in switched_on.skip_message
    baseline = context.cursor
    assert baseline == hashlib.sha256(requests.read_bytes()).hexdigest()
    assert isinstance(edit_requests_changed(build_sensor_context(cursor=baseline)), SkipReason)
    requests.write_text('{"prompt": "a", "image": "x.png"}\n')
    first = edit_requests_changed(build_sensor_context(cursor=baseline))
    assert isinstance(first, RunRequest)
    first_digest = first.tags["firm/requests_sha256"]
    assert isinstance(edit_requests_changed(build_sensor_context(cursor=first_digest)), SkipReason)
    requests.write_text('{"prompt": "b", "image": "x.png"}\n')
    changed = edit_requests_changed(build_sensor_context(cursor=first_digest))
    assert isinstance(changed, RunRequest) and changed.run_key != first.run_key
    # going back to the first content is a change too (A -> B -> A)
    requests.write_text('{"prompt": "a", "image": "x.png"}\n')
    back = edit_requests_changed(build_sensor_context(cursor=changed.tags["firm/requests_sha256"]))
    assert isinstance(back, RunRequest) and back.run_key not in {first.run_key, changed.run_key}


def test_every_asset_has_a_code_reference_an_owner_and_a_description() -> None:
    """The catalog leads from an asset's name to the file that defines it, and says whose it is."""
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        references = node.metadata["dagster/code_references"].code_references
        assert references and Path(references[0].file_path).is_file(), key
        assert node.owners == ["team:firm"], key
        assert node.description, key
