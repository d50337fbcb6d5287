"""Launch a trainer: what every asset that trains a model does around its training subprocess.

Runs in the Dagster process. An asset that trains (`critics/assets.py`, `rl/assets.py`) describes one
version in a `TrainerJob` (`critics/launch.py`, `rl/launch.py`: the version and what goes into it,
the parameters its trainer reads, the lineage row, the metadata); `launch_trainer` does the rest the
same way for both: skip a version that exists, open the MLflow run, write the parameters file,
launch the trainer module (`critics/train.py`, `rl/train.py`, which run in their own process and
read `--params` through `trainer_entry.py`) through Dagster Pipes so its logs stream into the run,
take the last message it reports as its summary, finish the MLflow run (FAILED when anything fails,
KILLED when the Dagster run is terminated),
record the lineage row and the cost (`firm cost`), and return the output, versioned by the job's
version.

The cost (`CostMeter`): the asset's and the trainer's CPU seconds, and one line for the base model
the trainer trained (its wall time as model seconds, GPU seconds on CUDA, and the counts it
reported). A skip records its seconds and no model line."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from dagster import AssetExecutionContext, DataVersion, MetadataValue, Output, PipesSubprocessClient

from firm_assets.curation.costs import CostMeter
from resources.chat import ModelRef
from resources.models import ModelsResource
from resources.tracking import TrackingResource, dagster_tags, process_tags
from resources.warehouse_resource import WarehouseResource
from warehouse.connection import Warehouse


@dataclass(frozen=True, kw_only=True, eq=False)
class TrainerJob(ABC):
    """One version of a trained asset: what its kind decided (fields) and says (methods)."""

    asset: str  # the asset's name, also the name its model is registered under
    version: str
    trained_on: str  # what this version is trained on, for the log line of a skip
    trainer: str  # the module the subprocess runs: `<launcher> <trainer> --params <params_file>`
    launcher: list[str]
    params_file: Path
    experiment: str  # the MLflow experiment of its runs
    reopens_run: bool  # an unfinished run named in an earlier attempt's params file continues
    stage: str  # the cost line's stage
    base: ModelRef  # the model the cost line names
    schema: dict[str, Any]  # the asset's frame: one row, its lineage row

    @abstractmethod
    def existing(self, warehouse: Warehouse) -> pl.DataFrame | None:
        """The recorded row of this version when its weights are still there, else None."""

    @abstractmethod
    def params(self, run_id: str, tracking_uri: str) -> dict[str, Any]:
        """What the trainer reads from its parameters file."""

    @abstractmethod
    def log_run(self, tracking: TrackingResource, run_id: str) -> None:
        """The MLflow params (and inputs) of a new run."""

    def after_training(self, tracking: TrackingResource, run_id: str, summary: dict) -> dict[str, Any]:
        """Work on the trained model before its run finishes (e.g. registering it); what it returns
        joins the summary. Nothing by default: the trainer did it all."""
        return {}

    @abstractmethod
    def row(self, run_id: str, summary: dict) -> dict[str, Any]:
        """The lineage row of the trained version."""

    @abstractmethod
    def record(self, warehouse: Warehouse, row: dict[str, Any], summary: dict, dagster_run_id: str) -> None:
        """Write the lineage row (and whatever else the version leaves in the warehouse)."""

    @abstractmethod
    def metadata(self, summary: dict) -> dict[str, Any]:
        """The materialization's metadata from the trainer's summary (a training run only)."""

    @abstractmethod
    def describe(self, row: dict[str, Any]) -> dict[str, Any]:
        """The materialization's metadata from the lineage row (trained now or found)."""


def open_run(
    tracking: TrackingResource, experiment: str, name: str, tags: dict[str, str], params_file: Path | None
) -> tuple[str, bool]:
    """The MLflow run of a version's training: the run of an earlier attempt that did not finish (its
    id, `mlflow_run_id`, in the attempt's `params_file`) reopened, so a resumed run's curve continues
    in the same run, else a new run. Returns (run id, reopened)."""
    from mlflow.exceptions import MlflowException

    if params_file is not None and params_file.exists():
        run_id = json.loads(params_file.read_text())["mlflow_run_id"]
        client = tracking.client()
        try:
            run = client.get_run(run_id)
        except MlflowException:
            run = None
        if run is not None and run.info.lifecycle_stage == "active" and run.info.status != "FINISHED":
            for key, value in process_tags().items():  # owned by this process from now on
                client.set_tag(run_id, key, value)
            client.set_tag(run_id, "firm.reopened_by_run", tags.get("dagster.run_id", ""))
            client.update_run(run_id, status="RUNNING")
            return run_id, True
    return tracking.create_run(experiment, name, tags), False


def launch_trainer(
    context: AssetExecutionContext,
    build_job: Callable[[Warehouse], TrainerJob],
    models: ModelsResource,
    warehouse_resource: WarehouseResource,
    tracking: TrackingResource,
    pipes: PipesSubprocessClient,
) -> Output[pl.DataFrame]:
    """Train the version `build_job` describes in its trainer subprocess (or find it trained) and
    return the output. Called first in the asset's body: the cost counts from here, building the job
    (hashing the version, storing a prompt set) included."""
    meter = CostMeter()
    warehouse = warehouse_resource.get()
    job = build_job(warehouse)
    existing = job.existing(warehouse)
    if existing is not None:
        context.log.info(f"{job.asset} {job.version} already trained {job.trained_on}; not retraining")
        meter.record(context, warehouse, job.version)
        return _output(existing, {"trained": False}, job, tracking)

    run_id, reopened = open_run(
        tracking,
        job.experiment,
        f"{job.asset}-{job.version[:8]}",
        dagster_tags(context, job.version),
        job.params_file if job.reopens_run else None,
    )
    try:  # from here on the run ends FAILED, or KILLED when the Dagster run is terminated
        job.params_file.parent.mkdir(parents=True, exist_ok=True)
        job.params_file.write_text(json.dumps(job.params(run_id, tracking.uri()), indent=1))
        if not reopened:  # a reopened run has them already (and MLflow params cannot change)
            job.log_run(tracking, run_id)
        models.release_for_subprocess()
        invocation = pipes.run(
            context=context, command=[*job.launcher, job.trainer, "--params", str(job.params_file)]
        )
        summary = invocation.get_custom_messages()[-1]
        summary |= job.after_training(tracking, run_id, summary)
    except BaseException as error:  # Dagster's termination is not an Exception
        tracking.finish(run_id, "FAILED" if isinstance(error, Exception) else "KILLED")
        raise
    tracking.finish(run_id)
    row = job.row(run_id, summary)
    job.record(warehouse, row, summary, context.run_id)
    meter.add_training(job.stage, job.base, summary["cost"])
    meter.record(context, warehouse, job.version)
    frame = pl.DataFrame([row], schema=job.schema)
    return _output(frame, {"trained": True, **job.metadata(summary)}, job, tracking)


def _output(
    frame: pl.DataFrame, metadata: dict[str, Any], job: TrainerJob, tracking: TrackingResource
) -> Output[pl.DataFrame]:
    row = frame.row(0, named=True)
    return Output(
        frame,
        data_version=DataVersion(row["version"]),
        metadata={
            **metadata,
            **job.describe(row),
            "final_loss": row["final_loss"],
            "mlflow_run_id": row["mlflow_run_id"],
            "mlflow_run": tracking.run_link(row["mlflow_run_id"]),
            "registered_model": MetadataValue.text(f"{row['registered_model']} v{row['model_version']}"),
        },
    )
