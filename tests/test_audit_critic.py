"""`firm audit critic` and the critic half of `firm audit sample`, on a warehouse built by hand through
the real code (the cache's run_cached, the dataset's register_version), no Dagster run needed; and a
small run of the P4 scale bench."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from cli_runs import firm

from firm_assets.curation.cache import CacheItem, CallSpec, Outcome, run_cached
from firm_assets.curation.dataset import dataset_version_id, register_version
from resources.chat import ModelRef
from warehouse.connection import Warehouse
from warehouse.lineage import critic_report, find_critic_versions, sample_critics, sample_memberships

REPO = Path(__file__).resolve().parent.parent
CRITIC = "firm_edit_critic"
CAPTIONER = ModelRef("Qwen/Qwen3-VL-8B-Instruct", "rev-captioner-1")
JUDGE = ModelRef("Qwen/Qwen3-VL-32B-Instruct", "rev-judge-7")
SOURCES = {"s1": "flux-kontext", "s2": "flux-kontext", "s3": "qwen-image-edit"}


def _cache(warehouse: Warehouse, spec: CallSpec, run_id: str, answer: dict[str, dict]) -> dict[str, str]:
    """Commit one stage's rows through run_cached with a fake model; returns cache key by sample."""
    items = [CacheItem(sample, {"sample": sample}, sample) for sample in SOURCES]
    results, stats = run_cached(
        warehouse,
        spec,
        items,
        lambda batch: [Outcome(str(answer[s]), answer[s], model_seconds=0.1) for s in batch],
        batch_size=8,
        run_id=run_id,
    )
    assert stats.model_calls == len(SOURCES)
    return {sample: result.cache_key for sample, result in results.items()}


def _critic(warehouse: Warehouse, version: str, dataset_version: str, created_at: datetime) -> None:
    with warehouse.transaction() as con:
        con.execute(
            "INSERT INTO critics (critic, version, base_model, base_revision, dataset, dataset_version,"
            " recipe, path, revision, final_loss, mlflow_run_id, registered_model, model_version,"
            " dagster_run_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                CRITIC,
                version,
                "Qwen/Qwen3-VL-2B-Instruct",
                "rev-base-3",
                "firm_edit",
                dataset_version,
                '{"epochs": 1}',
                f"/models/{CRITIC}/{version}",
                f"weights-{version}",
                0.5,
                f"mlflow-{version}",
                CRITIC,
                "2" if version.startswith("bbbb") else "1",
                f"train-run-{version[:4]}",
                created_at,
            ],
        )


@pytest.fixture
def audited_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A FIRM_HOME whose warehouse holds two versions of firm_edit (all three samples; s1 and s2 only)
    and two versions of the critic, one trained on each."""
    home = tmp_path / "home"
    monkeypatch.setenv("FIRM_HOME", str(home))
    warehouse = Warehouse(home / "warehouse.duckdb")
    caption_keys = _cache(
        warehouse,
        CallSpec("difference_captions", CAPTIONER, "difference_caption@1#aaaa1111", "caption@1", {"t": 0}),
        "curation-run-1",
        {s: {"caption": f"caption of {s}"} for s in SOURCES},
    )
    score_keys = _cache(
        warehouse,
        CallSpec("execution_scores", JUDGE, "execution_score@2#bbbb2222", "score_json@1", {"t": 0}),
        "curation-run-2",
        {s: {"reasoning": "fine", "score": i + 3} for i, s in enumerate(SOURCES)},
    )
    frame = pl.DataFrame(
        {
            "sample_id": list(SOURCES),
            "source": list(SOURCES.values()),
            "caption": [f"caption of {s}" for s in SOURCES],
            "execution_score": [3.0, 4.0, 5.0],
            "cache_keys": [[caption_keys[s], score_keys[s]] for s in SOURCES],
        }
    )
    versions = {}
    for label, rows, params in (
        ("all", frame, {"max_per_bin": 0}),
        ("two", frame.head(2), {"max_per_bin": 1}),
    ):
        version = dataset_version_id(rows, params)
        folder = home / "datasets" / "firm_edit" / version
        register_version(
            warehouse, "firm_edit", version, rows, params, folder, f"publish-{label}", f"mlflow-ds-{label}"
        )
        versions[label] = version
    _critic(warehouse, "aaaa0000critic01", versions["all"], datetime(2025, 1, 1))
    _critic(warehouse, "bbbb0000critic02", versions["two"], datetime(2025, 1, 2))
    return {"home": home, "warehouse": warehouse, "versions": versions}


def _firm(home: Path, *args: str) -> subprocess.CompletedProcess:
    return firm(*args, home=home)


def test_find_critic_versions_by_name_prefix_and_name_at_prefix(audited_home: dict) -> None:
    warehouse = audited_home["warehouse"]
    assert find_critic_versions(warehouse, CRITIC)["version"].to_list() == [
        "aaaa0000critic01",
        "bbbb0000critic02",
    ]
    assert find_critic_versions(warehouse, "bbbb")["version"].to_list() == ["bbbb0000critic02"]
    assert find_critic_versions(warehouse, f"{CRITIC}@aaaa")["version"].to_list() == ["aaaa0000critic01"]
    assert find_critic_versions(warehouse, f"{CRITIC}@cccc").is_empty()
    assert find_critic_versions(warehouse, "other_critic@aaaa").is_empty()
    assert find_critic_versions(warehouse, "no-such-critic").is_empty()


def test_critic_audit_row_and_report(audited_home: dict) -> None:
    versions = audited_home["versions"]
    row = find_critic_versions(audited_home["warehouse"], f"{CRITIC}@aaaa").row(0, named=True)
    assert row["base_model"] == "Qwen/Qwen3-VL-2B-Instruct" and row["base_revision"] == "rev-base-3"
    assert row["path"] == f"/models/{CRITIC}/aaaa0000critic01"
    assert (row["dataset"], row["dataset_version"], row["n_samples"]) == ("firm_edit", versions["all"], 3)
    assert row["sources"] == [
        {"source": "flux-kontext", "samples": 2},
        {"source": "qwen-image-edit", "samples": 1},
    ]
    assert row["templates"] == [
        "difference_captions: difference_caption@1#aaaa1111",
        "execution_scores: execution_score@2#bbbb2222",
    ]
    assert row["curation_models"] == [
        "difference_captions: Qwen/Qwen3-VL-8B-Instruct@rev-captioner-1",
        "execution_scores: Qwen/Qwen3-VL-32B-Instruct@rev-judge-7",
    ]
    assert row["curation_dagster_runs"] == ["curation-run-1", "curation-run-2"]
    assert row["trained_by_dagster_run"] == "train-run-aaaa"
    assert row["dataset_published_by_dagster_run"] == "publish-all"
    assert (row["mlflow_run_id"], row["registered_model"], row["model_version"]) == (
        "mlflow-aaaa0000critic01",
        CRITIC,
        "1",
    )

    report = critic_report(row)
    for line in (
        f"critic {CRITIC} version aaaa0000critic01",
        "  base model: Qwen/Qwen3-VL-2B-Instruct @ rev-base-3",
        f"  trained on dataset firm_edit version {versions['all']}",
        "  samples: 3",
        "  sources: flux-kontext=2, qwen-image-edit=1",
        "    execution_scores: execution_score@2#bbbb2222",
        "    difference_captions: Qwen/Qwen3-VL-8B-Instruct@rev-captioner-1",
        "  curation Dagster runs: curation-run-1, curation-run-2",
        "  trained by Dagster run train-run-aaaa",
        "  MLflow run mlflow-aaaa0000critic01",
        f"  registered model {CRITIC} version 1",
    ):
        assert line in report.splitlines(), (line, report)


def test_sample_critics_follow_dataset_membership(audited_home: dict) -> None:
    warehouse = audited_home["warehouse"]
    versions = audited_home["versions"]
    both = sample_critics(warehouse, "s1")
    assert both["version"].to_list() == ["aaaa0000critic01", "bbbb0000critic02"]
    assert both["dataset_version"].to_list() == [versions["all"], versions["two"]]
    assert both["source"].to_list() == ["flux-kontext", "flux-kontext"]
    only_all = sample_critics(warehouse, "s3")
    assert only_all.select("critic", "version").rows() == [(CRITIC, "aaaa0000critic01")]
    assert sample_critics(warehouse, "no-such-sample").is_empty()
    assert sample_memberships(warehouse, "s3")["version"].to_list() == [versions["all"]]


def test_cli_audit_critic_and_sample(audited_home: dict) -> None:
    home, versions = audited_home["home"], audited_home["versions"]
    critic = _firm(home, "audit", "critic", f"{CRITIC}@bbbb")
    assert critic.returncode == 0, critic.stderr
    assert f"critic {CRITIC} version bbbb0000critic02" in critic.stdout
    assert f"trained on dataset firm_edit version {versions['two']}" in critic.stdout
    assert "  samples: 2" in critic.stdout and "sources: flux-kontext=2" in critic.stdout
    assert f"registered model {CRITIC} version 2" in critic.stdout
    assert "aaaa0000critic01" not in critic.stdout
    assert _firm(home, "audit", "critic", CRITIC).stdout.count(f"critic {CRITIC} version") == 2

    sample = _firm(home, "audit", "sample", "s3")
    assert sample.returncode == 0, sample.stderr
    assert f"firm_edit {versions['all']} (source qwen-image-edit" in sample.stdout
    assert "trained 1 critic version(s)" in sample.stdout
    assert f"critic {CRITIC} aaaa0000critic01 (dataset firm_edit {versions['all']}" in sample.stdout
    assert "bbbb0000critic02" not in sample.stdout

    assert _firm(home, "audit", "critic", "no-such-critic").returncode == 1
    assert _firm(home, "audit", "critic", f"{CRITIC}@ffff").returncode == 1
    assert _firm(home, "audit", "sample", "no-such-sample").returncode == 1


def test_scale_bench_small_run_prints_p4_line() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--n", "2000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"P4 publish_s=([\d.]+) peak_rss_gib=([\d.]+) audit_s=([\d.]+)", last)
    assert match, result.stdout
    assert float(match.group(3)) < 1.0
