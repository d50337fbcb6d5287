"""`firm_edit_critic` and `firm_gen_critic`: SFT of the critic base model on one exact dataset version."""

import polars as pl
from dagster import AssetExecutionContext, DataVersion, MetadataValue, Output, PipesSubprocessClient, asset

from firm_assets.automation import CRITIC_CONDITION, GPU_POOL
from firm_assets.critics.launch import TRAINING_CODE_VERSION, CriticSpec, train_critic
from firm_assets.critics.recipe import CriticTrainingConfig
from resources.models import ModelsResource
from resources.tracking import TrackingResource
from resources.warehouse_resource import WarehouseResource

GROUP = "critics"
EDIT_CRITIC = CriticSpec("firm_edit_critic", "firm_edit", ("edit_execution", "edit_consistency"))
GEN_CRITIC = CriticSpec("firm_gen_critic", "firm_gen", ("gen_instruction", "gen_quality"))


def _output(critic: pl.DataFrame, metadata: dict, tracking: TrackingResource) -> Output[pl.DataFrame]:
    row = critic.row(0, named=True)
    return Output(
        critic,
        data_version=DataVersion(row["version"]),
        metadata={
            **metadata,
            "rows": critic.height,
            "critic_version": row["version"],
            "dataset_version": row["dataset_version"],
            "final_loss": row["final_loss"],
            "mlflow_run_id": row["mlflow_run_id"],
            "mlflow_run": tracking.run_link(row["mlflow_run_id"]),
            "registered_model": MetadataValue.text(f"{row['registered_model']} v{row['model_version']}"),
            "path": MetadataValue.path(row["path"]),
        },
    )


@asset(
    automation_condition=CRITIC_CONDITION,
    pool=GPU_POOL,
    group_name=GROUP,
    code_version=TRAINING_CODE_VERSION,
    kinds={"transformers", "mlflow"},
    description="Edit critic: SFT of the critic base on the execution and consistency tasks of the "
    "exact firm_edit_dataset version; trained in a Pipes subprocess, registered in MLflow.",
)
def firm_edit_critic(
    context: AssetExecutionContext,
    config: CriticTrainingConfig,
    firm_edit_dataset: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
    tracking: TrackingResource,
    pipes_subprocess_client: PipesSubprocessClient,
) -> Output[pl.DataFrame]:
    """The editing critic, fine-tuned on the curated editing dataset and registered in MLflow."""
    critic, metadata = train_critic(
        context, EDIT_CRITIC, firm_edit_dataset, config, models, warehouse, tracking, pipes_subprocess_client
    )
    return _output(critic, metadata, tracking)


@asset(
    automation_condition=CRITIC_CONDITION,
    pool=GPU_POOL,
    group_name=GROUP,
    code_version=TRAINING_CODE_VERSION,
    kinds={"transformers", "mlflow"},
    description="Generation critic: SFT on the instruction-following and quality tasks of the exact "
    "firm_gen_dataset version; trained in a Pipes subprocess, registered in MLflow.",
)
def firm_gen_critic(
    context: AssetExecutionContext,
    config: CriticTrainingConfig,
    firm_gen_dataset: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
    tracking: TrackingResource,
    pipes_subprocess_client: PipesSubprocessClient,
) -> Output[pl.DataFrame]:
    """The generation critic, fine-tuned on the curated generation dataset and registered in MLflow."""
    critic, metadata = train_critic(
        context, GEN_CRITIC, firm_gen_dataset, config, models, warehouse, tracking, pipes_subprocess_client
    )
    return _output(critic, metadata, tracking)
