"""Lineage questions answered from the warehouse: what produced a dataset version or a critic, and
where a sample went. Reads views and tables only; every answer is exact (no "latest file" guessing)."""

import json
from typing import Any

import polars as pl

from warehouse.connection import Warehouse

# the key of an imported dataset version's params that lists its released files (`critics/released.py`)
IMPORTED_FILES = "imported_files"


def _ref_filter(name_column: str, ref: str) -> tuple[str, list[str]]:
    """WHERE clause for `ref`: a name (all its versions), `name@version-prefix`, or a version prefix."""
    name, _, prefix = ref.partition("@")
    if prefix:
        return f"WHERE {name_column} = ? AND starts_with(version, ?)", [name, prefix]
    return f"WHERE {name_column} = ? OR starts_with(version, ?)", [ref, ref]


def find_dataset_versions(warehouse: Warehouse, ref: str) -> pl.DataFrame:
    """Versions matching `ref`: a dataset name (all its versions), `name@version-prefix`, or a prefix."""
    sql, params = _ref_filter("dataset", ref)
    return warehouse.query(f"SELECT * FROM dataset_audit {sql} ORDER BY created_at", params)


def find_critic_versions(warehouse: Warehouse, ref: str) -> pl.DataFrame:
    """Critic versions matching `ref` (a critic name, `name@version-prefix`, or a version prefix), each
    with the provenance of the dataset version it trained on, from the `critic_audit` view."""
    sql, params = _ref_filter("critic", ref)
    return warehouse.query(f"SELECT * FROM critic_audit {sql} ORDER BY created_at", params)


def imported_files(warehouse: Warehouse, dataset: str, version: str) -> list[dict[str, Any]]:
    """The released files an imported dataset version was read from (task, path, sha256, bytes,
    records kept and quarantined); empty for a version curated here."""
    rows = warehouse.rows(
        "SELECT params FROM dataset_versions WHERE dataset = ? AND version = ?", [dataset, version]
    )
    return json.loads(rows[0][0]).get(IMPORTED_FILES, []) if rows else []


def imported_lines(files: list[dict[str, Any]]) -> list[str]:
    """Report lines naming the released files of an imported version, each with its sha256."""
    if not files:
        return []
    return [
        "  imported from released files (no samples, model calls or prompt templates of this project):",
        *(
            f"    {f['task']}: {f['path']} sha256 {f['sha256']}"
            f" ({f['bytes']} bytes; {f['records']} records kept, {f['quarantined']} quarantined)"
            for f in files
        ),
    ]


def dataset_report(row: dict[str, Any], imported: list[dict[str, Any]] | None = None) -> str:
    """A dataset_audit row as text for `firm audit dataset`; `imported`: its released files."""
    lines = [
        f"dataset {row['dataset']} version {row['version']}",
        f"  samples: {row['n_samples']}   created: {row['created_at']}",
        *imported_lines(imported or []),
        "  sources: " + ", ".join(f"{s['source']}={s['samples']}" for s in row["sources"] or []),
        "  prompt templates:",
        *(f"    {t}" for t in row["templates"] or []),
        "  curation models:",
        *(f"    {m}" for m in row["models"] or []),
        f"  published by Dagster run {row['published_by_dagster_run']}, MLflow run {row['mlflow_run_id']}",
        "  curation Dagster runs: " + ", ".join(r for r in row["curation_dagster_runs"] or [] if r),
    ]
    return "\n".join(lines)


def sample_memberships(warehouse: Warehouse, sample_id: str) -> pl.DataFrame:
    """Every dataset version whose membership holds the sample."""
    return warehouse.query(
        "SELECT m.dataset, m.version, m.source, v.created_at FROM dataset_members m"
        " JOIN dataset_versions v USING (dataset, version) WHERE m.sample_id = ? ORDER BY v.created_at",
        [sample_id],
    )


def critic_report(row: dict[str, Any], imported: list[dict[str, Any]] | None = None) -> str:
    """A critic_audit row as text for `firm audit critic`: the model, the exact dataset version it
    trained on and that version's provenance (its curation, or the released files it was imported
    from: `imported`), and the runs and registry entry it came from."""
    lines = [
        f"critic {row['critic']} version {row['version']}",
        f"  base model: {row['base_model']} @ {row['base_revision']}",
        f"  path: {row['path']}   created: {row['created_at']}",
        f"  trained on dataset {row['dataset']} version {row['dataset_version']}",
        f"  samples: {row['n_samples']}",
        *imported_lines(imported or []),
        "  sources: " + ", ".join(f"{s['source']}={s['samples']}" for s in row["sources"] or []),
        "  prompt templates:",
        *(f"    {t}" for t in row["templates"] or []),
        "  curation models:",
        *(f"    {m}" for m in row["curation_models"] or []),
        "  curation Dagster runs: " + ", ".join(r for r in row["curation_dagster_runs"] or [] if r),
        f"  dataset published by Dagster run {row['dataset_published_by_dagster_run']},"
        f" MLflow run {row['dataset_mlflow_run_id']}",
        f"  trained by Dagster run {row['trained_by_dagster_run']}",
        f"  MLflow run {row['mlflow_run_id']}",
        f"  registered model {row['registered_model']} version {row['model_version']}",
    ]
    return "\n".join(lines)


def sample_critics(warehouse: Warehouse, sample_id: str) -> pl.DataFrame:
    """Every critic version whose training dataset version held the sample."""
    return warehouse.query(
        "SELECT c.critic, c.version, c.dataset, c.dataset_version, m.source, c.created_at"
        " FROM dataset_members m JOIN critics c ON c.dataset = m.dataset AND c.dataset_version = m.version"
        " WHERE m.sample_id = ? ORDER BY c.created_at, c.critic, c.version",
        [sample_id],
    )


def find_policy_versions(warehouse: Warehouse, ref: str) -> pl.DataFrame:
    """Policy versions matching `ref` (a policy name, `name@version-prefix`, or a version prefix), each
    with its critic, that critic's training dataset and its prompt set, from the `policy_audit` view."""
    sql, params = _ref_filter("policy", ref)
    return warehouse.query(f"SELECT * FROM policy_audit {sql} ORDER BY created_at", params)


def policy_prompts(warehouse: Warehouse, prompt_set: str, version: str) -> pl.DataFrame:
    """The prompt groups of one prompt-set version."""
    return warehouse.query(
        "SELECT prompt_id, text, source_sha, requirement FROM rl_prompt_sets"
        " WHERE prompt_set = ? AND version = ? ORDER BY prompt_id",
        [prompt_set, version],
    )


def policy_report(row: dict[str, Any], prompts: pl.DataFrame, shown: int = 10) -> str:
    """A policy_audit row as text for `firm audit policy`: which critic (and the data it learned
    from), which reward, which prompts, which base pipeline, and the runs and registry entry."""
    reward = json.loads(row["reward"])
    weights = f"w1={reward['w1']} w2={reward['w2']} normalisation={reward['normalisation']}"
    lines = [
        f"policy {row['policy']} version {row['version']}",
        f"  base model: {row['base_model']} @ {row['base_revision']}",
        f"  critic: {row['critic']} version {row['critic_version']} (loaded from {row['critic_source']})",
        f"  critic trained on dataset {row['critic_dataset']} version {row['critic_dataset_version']},"
        f" registered {row['critic_registered_model']} version {row['critic_model_version']}",
        f"  reward: {reward['formula']} {weights} score={reward['score_mode']}",
        f"  prompts: {row['prompt_set']} version {row['prompt_set_version']}"
        f" ({row['n_prompts']} prompt groups)",
        *(
            f"    {p['prompt_id']} {p['text']!r}"
            + (f" on source {p['source_sha'][:12]}" if p["source_sha"] else "")
            for p in prompts.head(shown).iter_rows(named=True)
        ),
        *([f"    ... and {prompts.height - shown} more"] if prompts.height > shown else []),
        f"  NFT config: {row['config']}",
        f"  steps: {row['final_step']}   final loss: {row['final_loss']}   created: {row['created_at']}",
        f"  LoRA: {row['lora_path']}   EMA LoRA: {row['ema_lora_path']}",
        f"  trained by Dagster run {row['trained_by_dagster_run']}, MLflow run {row['mlflow_run_id']}",
        f"  registered model {row['registered_model']} version {row['model_version']}",
    ]
    return "\n".join(lines)
