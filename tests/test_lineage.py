"""Lineage audits through the real `firm` command against a materialized warehouse."""

import subprocess
from pathlib import Path

from cli_runs import firm
from curated import Curated

from resources.home import warehouse_path
from warehouse.connection import Warehouse
from warehouse.lineage import find_dataset_versions


def _firm(*args: str) -> subprocess.CompletedProcess:
    return firm(*args)


def test_dataset_and_sample_audits(curated_edit: Curated, edit_home: Path) -> None:
    result = curated_edit.result  # the session's curated edit chain, audited in this test's copy
    wh = Warehouse(Path(warehouse_path()))
    row = find_dataset_versions(wh, "firm_edit").row(0, named=True)
    assert row["published_by_dagster_run"] == result.run_id
    assert row["n_samples"] == sum(s["samples"] for s in row["sources"])
    assert {t.split(": ")[0] for t in row["templates"]} == {
        "edit_candidates",
        "difference_captions",
        "execution_scores",
        "consistency_scores",
    }
    assert any(m.startswith("difference_captions: tiny:tiny-qwen3-vl@") for m in row["models"])
    assert result.run_id in row["curation_dagster_runs"]

    audit = _firm("audit", "dataset", f"firm_edit@{row['version'][:8]}")
    assert audit.returncode == 0, audit.stderr
    assert f"version {row['version']}" in audit.stdout
    assert "execution_scores: execution_score@2#" in audit.stdout
    assert f"MLflow run {row['mlflow_run_id']}" in audit.stdout

    sample = wh.rows("SELECT sample_id FROM dataset_members LIMIT 1")[0][0]
    memberships = _firm("audit", "sample", sample)
    assert memberships.returncode == 0 and f"firm_edit {row['version']}" in memberships.stdout
    assert _firm("audit", "sample", "no-such-sample").returncode == 1
    assert _firm("audit", "dataset", "no-such-dataset").returncode == 1
