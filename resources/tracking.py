"""MLflow tracking as a Dagster resource over MlflowClient (not the legacy dagster-mlflow resource).

Default store: SQLite under FIRM_HOME (MLflow 3.17 refuses the plain file store), artifacts beside
it; any tracking URI by config. Runs carry the Dagster run id, asset key, partition, code version
and data version as tags, so either UI leads to the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import ConfigurableResource

from resources.home import home_path

os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")


def default_tracking_uri() -> str:
    return f"sqlite:///{home_path('mlflow', 'mlflow.db')}"


class TrackingResource(ConfigurableResource):
    tracking_uri: str = ""

    def uri(self) -> str:
        return self.tracking_uri or default_tracking_uri()

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri(), registry_uri=self.uri())

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        """SQLite store creation and writes from concurrent runs are serialised by a lock file."""
        if not self.uri().startswith("sqlite:///"):
            yield
            return
        with home_path("mlflow", "mlflow.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def experiment_id(self, name: str) -> str:
        client = self.client()
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        artifacts = home_path("mlflow", "artifacts", name, ".keep").parent
        return client.create_experiment(name, artifact_location=artifacts.as_uri())

    def create_run(
        self, experiment: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None
    ) -> str:
        """A new run; with `parent_run_id` it is nested under that run (MLflow's parent tag)."""
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        with self._store_lock():
            client = self.client()
            return client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags).info.run_id

    def log_values(
        self, run_id: str, params: dict[str, Any], metrics: dict[str, float], step: int = 0
    ) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        with self._store_lock():
            self.client().log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
                params=[Param(k, str(v)) for k, v in params.items()],
            )

    def log_dataset_input(self, run_id: str, name: str, digest: str, source: str, context: str) -> None:
        """The dataset version as an MLflow dataset input, identified by its content digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type="local", source=source)
        with self._store_lock():
            self.client().log_inputs(
                run_id, [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])]
            )

    def log_artifacts(self, run_id: str, folder: str, artifact_path: str) -> str:
        """Copy a folder into the run's artifacts; returns its artifact URI."""
        with self._store_lock():
            client = self.client()
            client.log_artifacts(run_id, folder, artifact_path)
            return f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"

    def register_model(self, name: str, source: str, run_id: str, tags: dict[str, str]) -> str:
        """A new version of registered model `name` pointing at `source`; returns the version number."""
        from mlflow.exceptions import MlflowException

        with self._store_lock():
            client = self.client()
            with contextlib.suppress(MlflowException):  # already registered: add a version to it
                client.create_registered_model(name)
            return str(client.create_model_version(name, source, run_id=run_id, tags=tags).version)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        with self._store_lock():
            self.client().set_terminated(run_id, status)

    def log_run(
        self,
        experiment: str,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        metrics: dict[str, float],
        dataset: dict[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """One finished run with params, metrics, tags, optionally a dataset input (name, digest,
        source, context) and a parent run; returns its run id."""
        run_id = self.create_run(experiment, run_name, tags, parent_run_id)
        self.log_values(run_id, params, metrics)
        if dataset:
            self.log_dataset_input(
                run_id,
                dataset["name"],
                dataset["digest"],
                dataset["source"],
                dataset.get("context", "curation"),
            )
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
