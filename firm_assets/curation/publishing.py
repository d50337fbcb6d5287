"""The end of both chains: publish a dataset asset's rows as a version (exports, warehouse rows,
MLflow run with its digest) and hand Dagster the output, with the version travelling in the rows so
a critic names exactly the version it trained on."""

from collections.abc import Sequence
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, AssetKey, DataVersion, MetadataValue, Output

from firm_assets.curation.dataset import SftTask, publish_dataset
from firm_assets.curation.prompts import load_template
from resources.tracking import TrackingResource, dagster_tags, folder_dataset
from resources.warehouse_resource import WarehouseResource

EXPERIMENT = "firm-curation"
DATA_VERSION_TAG = "dagster/data_version"


def upstream_version(context: AssetExecutionContext, name: str) -> str:
    """The DataVersion Dagster recorded for the upstream's latest materialization (the rows this
    step loaded), so lineage edges name the same versions the UI shows."""
    event = context.instance.get_latest_materialization_event(AssetKey(name))
    materialization = event.asset_materialization if event else None
    return (
        (materialization.tags or {}).get(DATA_VERSION_TAG, "unknown") if materialization else "unmaterialized"
    )


def publish_output(
    context: AssetExecutionContext,
    dataset: str,
    frame: pl.DataFrame,
    tasks: Sequence[SftTask],
    params: dict,
    upstream: Sequence[str],
    mean_columns: dict[str, str],
    bin_column: str,
    warehouse: WarehouseResource,
    tracking: TrackingResource,
) -> Output[pl.DataFrame]:
    """`upstream` names the input assets (for lineage edges); `mean_columns` maps an MLflow metric name
    to the column it averages; `bin_column` is the score whose histogram the metadata shows."""
    # the exports render the critic prompts: editing one makes a new version (and a new critic)
    params = {**params, "sft_templates": {task.name: load_template(task.template_id).ref for task in tasks}}
    inputs = [(name, upstream_version(context, name)) for name in upstream]

    def log_mlflow(version: str, folder: Path) -> str:
        metrics = {"n_samples": frame.height}
        means = {name: frame[column].mean() for name, column in mean_columns.items()}
        metrics.update({name: mean for name, mean in means.items() if mean is not None})
        return tracking.log_run(
            experiment=EXPERIMENT,
            run_name=f"{dataset}-{version[:8]}",
            tags=dagster_tags(context, version),
            params=params,
            metrics=metrics,
            dataset=folder_dataset(frame, dataset, version, str(folder)),
        )

    published = publish_dataset(
        dataset, frame, tasks, params, inputs, warehouse.get(), context.run_id, log_mlflow
    )
    bins = {str(k): v for k, v in frame[bin_column].round(0).value_counts().sort(bin_column).rows()}
    return Output(
        frame.with_columns(pl.lit(published.version).alias("dataset_version")),
        data_version=DataVersion(published.version),
        metadata={
            "rows": frame.height,
            "dataset_version": published.version,
            "export_folder": MetadataValue.path(str(published.folder)),
            "score_bins": MetadataValue.json(bins),
        },
    )
