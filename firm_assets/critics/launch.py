"""One critic version as a `TrainerJob`: what `firm_assets/trainer_launch.py` needs to train it.

Runs in the Dagster process (the critic assets, `assets.py`, build it); the trainer it launches,
`train.py`, runs in its own process. The version hashes the dataset version, the base weights, the
recipe, the launch and the tasks; the trained critic is logged to MLflow as an `mlflow.transformers`
model and registered once. Its cost line: the base model (stage `sft`), the trainer's optimizer
updates as calls and the training tokens it read as tokens in."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from dagster import MetadataValue

from firm_assets.critics.recipe import (
    CriticTrainingConfig,
    effective_recipe,
    launch_identity,
    launch_prefix,
    version_recipe,
)
from firm_assets.critics.released import training_frame
from firm_assets.curation.versioning import short_hash
from firm_assets.trainer_launch import TrainerJob
from resources.chat import ModelRef
from resources.home import firm_home
from resources.models import ModelsResource, resolve_model_path
from resources.tracking import TrackingResource, folder_dataset
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
    """What differs between the edit and the generation critic: the asset (name, description), the
    dataset it trains on (its warehouse name and its asset) and the SFT tasks."""

    name: str
    dataset: str
    dataset_asset: str
    tasks: tuple[str, ...]
    description: str


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


@dataclass(frozen=True, kw_only=True, eq=False)
class CriticTraining(TrainerJob):
    """One critic version: the dataset version it trains on, the base weights and the recipe."""

    spec: CriticSpec
    dataset_frame: pl.DataFrame
    dataset_version: str
    dataset_folder: str
    recipe: dict[str, Any]
    base_path: str
    accelerate_config: str

    @property
    def output(self) -> Path:
        """Where the trainer saves the critic's weights and processor."""
        return firm_home() / "critics" / self.spec.name / self.version

    def existing(self, warehouse: Warehouse) -> pl.DataFrame | None:
        found = warehouse.query(
            f"SELECT {', '.join(CRITIC_SCHEMA)} FROM critics WHERE critic = ? AND version = ?",
            [self.spec.name, self.version],
        )
        return found if found.height and Path(found["path"][0]).exists() else None

    def params(self, run_id: str, tracking_uri: str) -> dict[str, Any]:
        return {
            "base_model": self.base_path,
            "dataset_folder": self.dataset_folder,
            "tasks": list(self.spec.tasks),
            "output_dir": str(self.output),
            # a relaunch of the same version resumes from here; deleted once the weights are saved
            "checkpoint_dir": str(self.output.with_name(f"{self.version}.checkpoints")),
            "recipe": self.recipe,
            "mlflow": {"tracking_uri": tracking_uri, "run_id": run_id},  # the trainer logs losses there
        }

    def log_run(self, tracking: TrackingResource, run_id: str) -> None:
        tracking.log_values(
            run_id,
            {
                **self.recipe,
                "base_model": self.base.model_id,
                "base_revision": self.base.revision,
                "dataset_version": self.dataset_version,
                "tasks": ",".join(self.spec.tasks),
                "accelerate_config": self.accelerate_config,
            },
            {},
        )
        dataset = folder_dataset(
            self.dataset_frame, self.spec.dataset, self.dataset_version, self.dataset_folder
        )
        tracking.log_dataset_input(run_id, dataset, "training")

    def after_training(self, tracking: TrackingResource, run_id: str, summary: dict) -> dict[str, Any]:
        """Log what actually ran and the final losses, then register the critic (once per version)."""
        final = {"final_loss": summary["final_loss"], "train_seconds": summary["train_seconds"]}
        if summary["final_val_loss"] is not None:
            final["final_val_loss"] = summary["final_val_loss"]
        # what actually ran (bf16 only where the device has it, who checkpointed activations)
        tracking.log_values(run_id, {f"ran.{k}": v for k, v in summary["ran"].items()}, final)
        model_version = tracking.register_transformers_model(
            run_id,
            self.spec.name,
            lambda: critic_pipeline(str(self.output)),
            {"dataset_version": self.dataset_version, "critic_version": self.version},
            unique_tag="critic_version",
            pip_requirements=pip_requirements(),
        )
        return {"model_version": model_version}

    def row(self, run_id: str, summary: dict) -> dict[str, Any]:
        return {
            "critic": self.spec.name,
            "version": self.version,
            "base_model": self.base.model_id,
            "base_revision": self.base.revision,
            "dataset": self.spec.dataset,
            "dataset_version": self.dataset_version,
            "path": str(self.output),
            "revision": weights_identity(str(self.output)),
            "final_loss": summary["final_loss"],
            "mlflow_run_id": run_id,
            "registered_model": self.spec.name,
            "model_version": summary["model_version"],
        }

    def record(self, warehouse: Warehouse, row: dict[str, Any], summary: dict, dagster_run_id: str) -> None:
        with warehouse.transaction() as con:
            con.execute(
                f"INSERT INTO critics ({', '.join(row)}, recipe, dagster_run_id) VALUES"
                f" ({', '.join('?' * len(row))}, ?, ?) ON CONFLICT (critic, version) DO UPDATE SET"
                " path = excluded.path, revision = excluded.revision, final_loss = excluded.final_loss,"
                " mlflow_run_id = excluded.mlflow_run_id, model_version = excluded.model_version,"
                " dagster_run_id = excluded.dagster_run_id, created_at = now()",
                [*row.values(), json.dumps(self.recipe, sort_keys=True), dagster_run_id],
            )

    def metadata(self, summary: dict) -> dict[str, Any]:
        return {
            "first_loss": summary["first_loss"],
            "updates": summary["updates"],
            "examples": summary["examples"],
            "val_examples": summary["val_examples"],
            "final_val_loss": summary["final_val_loss"],
            "train_seconds": summary["train_seconds"],
            "tokens_in": summary["cost"]["tokens_in"],
            **{f"ran_{k}": v for k, v in summary["ran"].items()},
        }

    def describe(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "rows": 1,
            "critic_version": row["version"],
            "dataset_version": row["dataset_version"],
            "path": MetadataValue.path(row["path"]),
        }


def critic_training(
    spec: CriticSpec,
    dataset_frame: pl.DataFrame,
    config: CriticTrainingConfig,
    models: ModelsResource,
    warehouse: Warehouse,
) -> CriticTraining:
    """The critic version the dataset version (the upstream's, or the run config's `dataset_version`),
    the profile's base and recipe and the run config make."""
    dataset_frame = training_frame(warehouse, spec.dataset, spec.tasks, config.dataset_version, dataset_frame)
    if dataset_frame.is_empty():
        raise ValueError(f"{spec.dataset} is empty: nothing to train {spec.name} on")
    dataset_version = dataset_frame["dataset_version"][0]
    profile = models.settings()
    recipe = effective_recipe(profile.critic.recipe, config)
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
    folders = warehouse.rows(
        "SELECT export_path FROM dataset_versions WHERE dataset = ? AND version = ?",
        [spec.dataset, dataset_version],
    )
    if not folders:
        raise ValueError(f"dataset {spec.dataset} version {dataset_version} is not in the warehouse")
    return CriticTraining(
        asset=spec.name,
        version=version,
        trained_on=f"on {dataset_version}",
        trainer=TRAIN_MODULE,
        launcher=launch_prefix(config, recipe["method"]),
        params_file=firm_home() / "critics" / spec.name / f"{version}.params.json",
        experiment="firm-critics",
        reopens_run=False,  # a resumed trainer logs the history it restored into a new run
        stage="sft",
        base=ModelRef(profile.critic.base, base_revision),
        schema=CRITIC_SCHEMA,
        spec=spec,
        dataset_frame=dataset_frame,
        dataset_version=dataset_version,
        dataset_folder=str(Path(folders[0][0])),
        recipe=recipe,
        base_path=base_path,
        accelerate_config=config.accelerate_config,
    )
