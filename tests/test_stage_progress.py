"""Model stages report their progress into the run's event log while they work, which is what
`firm run` turns into an ETA; a stage answered wholly from the cache reports nothing."""

from pathlib import Path

import pytest
from curated import Curated
from dagster import DagsterInstance
from graph_runs import materialize_group, metadata, progress_reports, stage_figures

from firm_assets.curation.cache import calls_per_second
from firm_assets.run_progress import metadata_totals


def test_edit_stages_report_model_calls_up_to_their_total(curated_edit: Curated, edit_home: Path) -> None:
    # the first run is the session's curated edit chain, its progress and compact view kept; the
    # second runs on this test's copy of its home
    first, reports, lines = curated_edit.result, curated_edit.reports, curated_edit.view_lines
    assert first.success
    with DagsterInstance.ephemeral() as instance:
        second = materialize_group("edit", instance=instance)
        assert second.success
        again = progress_reports(instance, second.run_id)

    for stage in ("edit_candidates", "difference_captions"):
        calls = metadata(first, stage)["model_calls"]
        done = [d for d, _, _ in reports[stage]]
        assert calls > 8 and len(done) >= 2, (stage, reports[stage])  # several batches, each reported
        assert done == sorted(set(done)) and done[-1] == calls  # increasing, up to every call made
        assert {(total, unit) for _, total, unit in reports[stage]} == {(calls, "model calls")}
    # edit_scores runs one stage per dimension and, for each, its canary stage (the pinned items asked
    # again): each ends at its total, and the totals add up
    scores = metadata(first, "edit_scores")
    finished = [total for done, total, _ in reports["edit_scores"] if done == total]
    canary = list(finished)
    for dimension in ("execution", "consistency"):
        canary.remove(scores[f"{dimension}_model_calls"])
    assert len(canary) == 2 and sum(canary) == scores["edit_canary_model_calls"] > 0
    assert sum(finished) == metadata_totals(scores)["model_calls"]
    # the compact view of `firm run` shows them with an ETA while a stage is under way
    assert any(line.split()[0] == "difference_captions" and "ETA" in line for line in lines), lines
    assert metadata(second, "difference_captions")["model_calls"] == 0
    assert "difference_captions" not in again and "edit_candidates" not in again


def test_every_stage_reports_its_wall_time_and_rate(curated_edit: Curated) -> None:
    """Each stage's wall seconds, model seconds and calls per second are in its asset's metadata (the
    figures a slowdown shows in); the rate is its calls over its wall time."""
    result = curated_edit.result
    walls, rates = stage_figures(result, "wall_seconds"), stage_figures(result, "calls_per_s")
    calls, seconds = stage_figures(result, "model_calls"), stage_figures(result, "model_seconds")
    stages = {"edit_candidates", "difference_captions", "execution", "consistency", "edit_canary"}
    assert set(walls) == set(rates) == set(calls) == stages
    for stage in stages:
        assert calls[stage] > 0 and walls[stage] >= seconds[stage] > 0, stage
        assert rates[stage] == pytest.approx(calls[stage] / walls[stage], rel=0.01), stage


def test_calls_per_second() -> None:
    assert calls_per_second(12, 4.0) == 3.0
    assert calls_per_second(2, 3.0) == 0.667
    assert calls_per_second(0, 5.0) == 0.0  # a stage answered from the cache made no calls
    assert calls_per_second(3, 0.0) == 0.0
