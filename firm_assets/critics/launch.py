"""Train one critic version through Dagster Pipes, log it to MLflow as an `mlflow.transformers` model
and register it once; skip the work when the same version (same dataset version, base weights and
recipe) already exists.

Each materialization records its cost (`firm cost`): the asset's and the trainer's CPU seconds, and
one line for the base model (stage `sft`) with the trainer's wall time as model seconds (GPU
seconds on CUDA), its optimizer updates as calls and the training tokens it read as tokens in. A
skip records its seconds and no model line."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from dagster import AssetExecutionContext, PipesSubprocessClient

from firm_assets.critics.recipe import (
    CriticTrainingConfig,
    effective_recipe,
    launch_identity,
    launch_prefix,
    version_recipe,
)
from firm_assets.critics.released import training_frame
from firm_assets.curation.costs import CostMeter
from firm_assets.curation.versioning import short_hash
from resources.chat import ModelRef
from resources.home import firm_home
from resources.models import ModelsResource, resolve_model_path
from resources.tracking import TrackingResource, dagster_tags, folder_dataset
from resources.warehouse_resource import WarehouseResource
from resources.weights import weights_identity
from warehouse.connection import Warehouse

TRAIN_MODULE = "firm_assets.critics.train"
TRAINING_CODE_VERSION = "sft@3"
CRITIC_TASK = "image-text-to-text"  # the transformers pipeline a registered critic loads as

CRITIC_SCHEMA = {
    "critic": pl.String,
    "version": pl.String,
    "base_model": pl.String,
    "base_revision": pl.String,
    "dataset": pl.String,
    "dataset_version": pl.String,
    "path": pl.String,
    "revision": pl.String,
    "final_loss": pl.Float64,
    "mlflow_run_id": pl.String,
    "registered_model": pl.String,
    "model_version": pl.String,
}


@dataclass(frozen=True)
class CriticSpec:
    """What differs between the edit and the generation critic: name, dataset and its SFT tasks."""

    name: str
    dataset: str
    tasks: tuple[str, ...]


def _dataset_folder(warehouse: Warehouse, dataset: str, version: str) -> Path:
    rows = warehouse.rows(
        "SELECT export_path FROM dataset_versions WHERE dataset = ? AND version = ?", [dataset, version]
    )
    if not rows:
        raise ValueError(f"dataset {dataset} version {version} is not in the warehouse")
    return Path(rows[0][0])


def _existing(warehouse: Warehouse, critic: str, version: str) -> pl.DataFrame:
    columns = ", ".join(CRITIC_SCHEMA)
    return warehouse.query(
        f"SELECT {columns} FROM critics WHERE critic = ? AND version = ?", [critic, version]
    )


def critic_pipeline(folder: str) -> Any:
    """The trained critic as the transformers pipeline MLflow logs (loaded on the CPU; the model and
    processor saved by the trainer)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

    model = AutoModelForImageTextToText.from_pretrained(folder)
    return pipeline(CRITIC_TASK, model=model, processor=AutoProcessor.from_pretrained(folder))


def pip_requirements() -> list[str]:
    """What loading a logged critic needs, pinned to the versions that logged it."""
    import torch
    import transformers

    # without the local build label (+cu130): pip matches any build of that release
    return [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]


def train_critic(
    context: AssetExecutionContext,
    spec: CriticSpec,
    dataset_frame: pl.DataFrame,
    config: CriticTrainingConfig,
    models: ModelsResource,
    warehouse: WarehouseResource,
    tracking: TrackingResource,
    pipes: PipesSubprocessClient,
) -> tuple[pl.DataFrame, dict]:
    """The critic row (trained now or found) and metadata for the materialization."""
    meter = CostMeter()
    dataset_frame = training_frame(
        warehouse.get(), spec.dataset, spec.tasks, config.dataset_version, dataset_frame
    )
    if dataset_frame.is_empty():
        raise ValueError(f"{spec.dataset} is empty: nothing to train {spec.name} on")
    dataset_version = dataset_frame["dataset_version"][0]
    profile = models.settings()
    recipe = effective_recipe(profile.critic.recipe, config)
    launcher = launch_prefix(config, recipe["method"])
    base_path = resolve_model_path(profile.critic.base)
    base_revision = weights_identity(base_path)
    version = short_hash(
        dataset_version,
        profile.critic.base,
        base_revision,
        json.dumps(version_recipe(recipe), sort_keys=True),
        json.dumps(launch_identity(config), sort_keys=True),
        spec.tasks,
        TRAINING_CODE_VERSION,
    )
    wh = warehouse.get()
    existing = _existing(wh, spec.name, version)
    if existing.height and Path(existing["path"][0]).exists():
        context.log.info(f"{spec.name} {version} already trained on {dataset_version}; not retraining")
        meter.record(context, wh, version)
        return existing, {"trained": False}

    output = firm_home() / "critics" / spec.name / version
    output.parent.mkdir(parents=True, exist_ok=True)
    params = {
        "base_model": base_path,
        "dataset_folder": str(_dataset_folder(wh, spec.dataset, dataset_version)),
        "tasks": list(spec.tasks),
        "output_dir": str(output),
        # a relaunch of the same version resumes from here; deleted once the weights are saved
        "checkpoint_dir": str(output.with_name(f"{version}.checkpoints")),
        "recipe": recipe,
    }
    run_id = tracking.create_run("firm-critics", f"{spec.name}-{version[:8]}", dagster_tags(context, version))
    params["mlflow"] = {"tracking_uri": tracking.uri(), "run_id": run_id}  # the trainer logs losses there
    params_file = output.with_name(f"{version}.params.json")
    params_file.write_text(json.dumps(params, indent=1))
    tracking.log_values(
        run_id,
        {
            **recipe,
            "base_model": profile.critic.base,
            "base_revision": base_revision,
            "dataset_version": dataset_version,
            "tasks": ",".join(spec.tasks),
            "accelerate_config": config.accelerate_config,
        },
        {},
    )
    dataset = folder_dataset(dataset_frame, spec.dataset, dataset_version, params["dataset_folder"])
    tracking.log_dataset_input(run_id, dataset, "training")
    models.release_for_subprocess()
    try:
        invocation = pipes.run(
            context=context, command=[*launcher, TRAIN_MODULE, "--params", str(params_file)]
        )
        summary = invocation.get_custom_messages()[-1]
        final = {"final_loss": summary["final_loss"], "train_seconds": summary["train_seconds"]}
        if summary["final_val_loss"] is not None:
            final["final_val_loss"] = summary["final_val_loss"]
        # what actually ran (bf16 only where the device has it, who checkpointed activations)
        tracking.log_values(run_id, {f"ran.{k}": v for k, v in summary["ran"].items()}, final)
        model_version = tracking.register_transformers_model(
            run_id,
            spec.name,
            lambda: critic_pipeline(str(output)),
            {"dataset_version": dataset_version, "critic_version": version},
            unique_tag="critic_version",
            pip_requirements=pip_requirements(),
        )
    except Exception:
        tracking.finish(run_id, "FAILED")
        raise
    tracking.finish(run_id)
    row = {
        "critic": spec.name,
        "version": version,
        "base_model": profile.critic.base,
        "base_revision": base_revision,
        "dataset": spec.dataset,
        "dataset_version": dataset_version,
        "path": str(output),
        "revision": weights_identity(str(output)),
        "final_loss": summary["final_loss"],
        "mlflow_run_id": run_id,
        "registered_model": spec.name,
        "model_version": model_version,
    }
    with wh.transaction() as con:
        con.execute(
            f"INSERT INTO critics ({', '.join(row)}, recipe, dagster_run_id) VALUES"
            f" ({', '.join('?' * len(row))}, ?, ?) ON CONFLICT (critic, version) DO UPDATE SET"
            " path = excluded.path, revision = excluded.revision, final_loss = excluded.final_loss,"
            " mlflow_run_id = excluded.mlflow_run_id, model_version = excluded.model_version,"
            " dagster_run_id = excluded.dagster_run_id, created_at = now()",
            [*row.values(), json.dumps(recipe, sort_keys=True), context.run_id],
        )
    meter.add_training("sft", ModelRef(profile.critic.base, base_revision), summary["cost"])
    meter.record(context, wh, version)
    metadata = {
        "trained": True,
        "first_loss": summary["first_loss"],
        "updates": summary["updates"],
        "examples": summary["examples"],
        "val_examples": summary["val_examples"],
        "final_val_loss": summary["final_val_loss"],
        "train_seconds": summary["train_seconds"],
        "tokens_in": summary["cost"]["tokens_in"],
        **{f"ran_{k}": v for k, v in summary["ran"].items()},
    }
    return pl.DataFrame([row], schema=CRITIC_SCHEMA), metadata
