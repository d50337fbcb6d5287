"""MLflow tracking as a Dagster resource over MlflowClient (not the legacy dagster-mlflow resource).

Default store: SQLite under FIRM_HOME (MLflow 3.17 refuses the plain file store), artifacts beside
it, including those of MLflow's "Default" experiment, so nothing lands in `./mlruns`; any tracking
URI by config. Runs carry the Dagster run id, asset key, partition, code version and data version
as tags, so either UI leads to the other, and the host and process that own them, so the next run
can end a run whose process was killed. Datasets are logged through `mlflow.data` (their source is
the version folder) and critics as `mlflow.transformers` models.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource, MetadataValue

from resources.home import home_path
from resources.processes import process_alive, process_start

if TYPE_CHECKING:
    import polars as pl
    from mlflow import MlflowClient
    from mlflow.data.dataset import Dataset

os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
# runs are offline by design: no usage telemetry leaves the machine
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SQLITE_PREFIX = "sqlite:///"
HOST_TAG = "firm.host"
PID_TAG = "firm.pid"
PID_START_TAG = "firm.pid_start"
ENDED_TAG = "firm.ended_because"
log = logging.getLogger(__name__)


def default_tracking_uri() -> str:
    """The MLflow store under the firm home when none is configured."""
    return f"{SQLITE_PREFIX}{home_path('mlflow', 'mlflow.db')}"


def artifact_root() -> Path:
    """Where every experiment's artifacts live: under FIRM_HOME, never the working directory."""
    return home_path("mlflow", "artifacts", ".keep").parent


def process_tags() -> dict[str, str]:
    """The tags naming this process as the owner of a run."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: process_start(pid)}


def owner_gone(tags: dict[str, str]) -> bool:
    """True only when a run's owning process is known to have ended: it ran on this host and its pid
    is free or now belongs to a process started at another time. Runs from other hosts or without
    owner tags are never judged dead."""
    pid = tags.get(PID_TAG, "")
    if tags.get(HOST_TAG) != socket.gethostname() or not pid.isdigit():
        return False
    if not process_alive(int(pid)):
        return True
    recorded = tags.get(PID_START_TAG, "")
    return bool(recorded) and process_start(int(pid)) != recorded


def folder_dataset(frame: pl.DataFrame, name: str, digest: str, folder: str) -> Dataset:
    """An `mlflow.data` dataset of `frame` whose source is the published version folder, identified
    by the version digest, so `mlflow.data.get_source` leads back to the files."""
    import mlflow.data
    from mlflow.data.sources import LocalArtifactDatasetSource

    return mlflow.data.from_polars(frame, source=LocalArtifactDatasetSource(folder), name=name, digest=digest)


DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


class TrackingResource(ConfigurableResource):
    """MLflow access for assets, so runs, models and metrics land in one store."""

    tracking_uri: str = ""

    def uri(self) -> str:
        """The tracking URI in use, configured or default."""
        return self.tracking_uri or default_tracking_uri()

    def client(self):
        """An MLflow client on this store, for tracking and the model registry."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri(), registry_uri=self.uri())

    def run_link(self, run_id: str) -> MetadataValue:
        """The run's page in the MLflow UI (FIRM_MLFLOW_UI, default the README's `mlflow ui` address),
        as asset metadata the Dagster UI renders as a link."""
        experiment_id = self.client().get_run(run_id).info.experiment_id
        ui = os.environ.get("FIRM_MLFLOW_UI", DEFAULT_MLFLOW_UI).rstrip("/")
        return MetadataValue.url(f"{ui}/#/experiments/{experiment_id}/runs/{run_id}")

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        """SQLite store creation and writes from concurrent runs are serialised by a lock file."""
        if not self.uri().startswith(SQLITE_PREFIX):
            yield
            return
        with home_path("mlflow", "mlflow.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._create_store()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _create_store(self) -> None:
        """Create a missing SQLite store with its default artifact root under FIRM_HOME; MLflow's own
        default would put the "Default" experiment's artifacts in `./mlruns`."""
        database = Path(self.uri().removeprefix(SQLITE_PREFIX))
        if database.exists():
            return
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        database.parent.mkdir(parents=True, exist_ok=True)
        SqlAlchemyStore(self.uri(), artifact_root().as_uri()).engine.dispose()

    @contextmanager
    def _fluent_run(self, run_id: str) -> Iterator[None]:
        """Point MLflow's process-wide tracking URI and experiment at this store and the run's
        experiment while a fluent API (model logging) runs, then restore what was there."""
        import mlflow

        experiment_id = self.client().get_run(run_id).info.experiment_id
        saved = {key: os.environ.pop(key, None) for key in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")}
        previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri())
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous_uri)
            os.environ.pop("MLFLOW_EXPERIMENT_ID")
            os.environ.update({key: value for key, value in saved.items() if value is not None})

    def experiment_id(self, name: str) -> str:
        """The named experiment's id, created on first use."""
        client = self.client()
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(name, artifact_location=(artifact_root() / name).as_uri())

    def create_run(
        self, experiment: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None
    ) -> str:
        """A new run owned by this process; with `parent_run_id` it is nested under that run (MLflow's
        parent tag). Runs of the experiment left RUNNING by a dead process are ended first."""
        tags = {**tags, **process_tags()}
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        with self._store_lock():
            client = self.client()
            experiment_id = self.experiment_id(experiment)
            self._end_orphans(experiment_id)
            return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

    def _end_orphans(self, experiment_id: str) -> None:
        """Mark KILLED every RUNNING run of the experiment whose owning process is gone (killed with
        SIGKILL, out of memory, power loss), saying so in a tag."""
        client = self.client()
        for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
            tags = run.data.tags
            if owner_gone(tags):
                reason = f"process {tags[PID_TAG]} on {tags[HOST_TAG]} ended without closing the run"
                log.warning(f"MLflow run {run.info.run_id}: {reason}; marking it KILLED")
                client.set_tag(run.info.run_id, ENDED_TAG, f"{reason}; noticed by process {os.getpid()}")
                client.set_terminated(run.info.run_id, "KILLED")

    def log_values(
        self, run_id: str, params: dict[str, Any], metrics: dict[str, float], step: int = 0
    ) -> None:
        """Logs params and metrics to a run in one batch."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        with self._store_lock():
            self.client().log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
                params=[Param(k, str(v)) for k, v in params.items()],
            )

    def log_dataset_input(self, run_id: str, dataset: Dataset, context: str) -> None:
        """An `mlflow.data` dataset as an input of the run, in `context` ("training", ...). The
        client API takes the entity form, which only the dataset itself can build."""
        from mlflow.entities import DatasetInput, InputTag

        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        with self._store_lock():
            self.client().log_inputs(run_id, [entity])

    def log_artifacts(self, run_id: str, folder: str, artifact_path: str) -> str:
        """Copy a folder into the run's artifacts; returns its artifact URI."""
        with self._store_lock():
            client = self.client()
            client.log_artifacts(run_id, folder, artifact_path)
            return f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"

    def register_transformers_model(
        self,
        run_id: str,
        name: str,
        pipeline: Callable[[], Any],
        tags: dict[str, str],
        unique_tag: str,
        pip_requirements: list[str],
    ) -> str:
        """Log `pipeline()` (a transformers pipeline) to the run as an `mlflow.transformers` model and
        register it as a new version of `name`, tagged `tags`; returns the version number. When a
        version with the same `unique_tag` value exists it is returned instead and nothing is logged:
        check and registration hold the store lock, so concurrent first runs register once. Explicit
        `pip_requirements` keep MLflow from inferring them (slow, and it may reach the network)."""
        import mlflow.transformers
        from mlflow.exceptions import MlflowException

        with self._store_lock():
            client = self.client()
            existing = _registered_version(client, name, unique_tag, tags[unique_tag])
            if existing:
                return existing
            # the logged model goes to the run's experiment, and the registry resolves its
            # `models:/m-...` URI, through MLflow's process-wide settings
            with self._fluent_run(run_id):
                loaded = pipeline()
                info = mlflow.transformers.log_model(
                    loaded,
                    name="model",
                    processor=getattr(loaded, "processor", None),  # multimodal: text + images
                    run_id=run_id,
                    pip_requirements=pip_requirements,
                    await_registration_for=0,
                )
                with contextlib.suppress(MlflowException):  # already registered: add a version to it
                    client.create_registered_model(name)
                version = client.create_model_version(
                    name, info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
                )
            return str(version.version)

    def log_image(self, run_id: str, image: Any, artifact_file: str) -> None:
        """A PIL image as an artifact of the run (sample grids)."""
        with self._store_lock():
            self.client().log_image(run_id, image, artifact_file=artifact_file)

    def register_folder_model(
        self, run_id: str, name: str, folder: str, artifact_path: str, tags: dict[str, str], unique_tag: str
    ) -> str:
        """Copy `folder` (e.g. peft LoRA weights) into the run's artifacts and register it as a new
        version of `name`, tagged `tags`; returns the version number. As for transformers models, a
        version with the same `unique_tag` value is returned instead and nothing is logged."""
        from mlflow.exceptions import MlflowException

        with self._store_lock():
            client = self.client()
            existing = _registered_version(client, name, unique_tag, tags[unique_tag])
            if existing:
                return existing
            client.log_artifacts(run_id, folder, artifact_path)
            source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
            with contextlib.suppress(MlflowException):  # already registered: add a version to it
                client.create_registered_model(name)
            return str(client.create_model_version(name, source, run_id=run_id, tags=tags).version)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """Ends a run with its final status."""
        with self._store_lock():
            self.client().set_terminated(run_id, status)

    def log_run(
        self,
        experiment: str,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        metrics: dict[str, float],
        dataset: Dataset | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """One finished run with params, metrics, tags, optionally an `mlflow.data` dataset it
        produced (logged in context "curation") and a parent run; returns its run id."""
        run_id = self.create_run(experiment, run_name, tags, parent_run_id)
        self.log_values(run_id, params, metrics)
        if dataset is not None:
            self.log_dataset_input(run_id, dataset, "curation")
        self.finish(run_id)
        return run_id


def dagster_tags(context, data_version: str | None = None) -> dict[str, str]:
    """The tags that tie an MLflow run to its Dagster materialization."""
    tags = {
        "dagster.run_id": context.run_id,
        "dagster.asset_key": context.asset_key.to_user_string(),
        "dagster.code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
    }
    if context.has_partition_key:
        tags["dagster.partition"] = context.partition_key
    if data_version:
        tags["dagster.data_version"] = data_version
    return tags


def _registered_version(client: MlflowClient, name: str, tag: str, value: str) -> str | None:
    """The first version of registered model `name` tagged `tag=value`, if any (what makes
    registering the same weights twice return the first version)."""
    versions = client.search_model_versions(f"name = '{name}' AND tags.{tag} = '{value}'")
    return str(min(int(version.version) for version in versions)) if versions else None
