"""MLflow tracking as a Dagster resource over MlflowClient (not the legacy dagster-mlflow resource).

Default store: SQLite under FIRM_HOME (MLflow 3.17 refuses the plain file store), artifacts beside
it; any tracking URI by config. Runs carry the Dagster run id, asset key, partition, code version
and data version as tags, so either UI leads to the other.
"""

from __future__ import annotations

import fcntl
import os
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

    def log_run(
        self,
        experiment: str,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        metrics: dict[str, float],
        dataset: dict[str, str] | None = None,
    ) -> str:
        """One finished MLflow run with params, metrics, tags and optionally a dataset input
        (name, digest, source); returns its run id."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        with self._store_lock():
            client = self.client()
            run = client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags)
            run_id = run.info.run_id
            for key, value in params.items():
                client.log_param(run_id, key, value)
            for key, value in metrics.items():
                client.log_metric(run_id, key, float(value))
            if dataset:
                client.log_inputs(
                    run_id,
                    [
                        DatasetInput(
                            Dataset(
                                name=dataset["name"],
                                digest=dataset["digest"],
                                source_type="local",
                                source=dataset["source"],
                            ),
                            tags=[InputTag("mlflow.data.context", dataset.get("context", "curation"))],
                        )
                    ],
                )
            client.set_terminated(run_id)
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
