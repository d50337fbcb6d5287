"""`firm_edit_critic` and `firm_gen_critic`: SFT of the critic base model on one exact dataset version.

Both come from `critic_asset` and differ only in their `CriticSpec`. A materialization builds the
version's `CriticTraining` (`launch.py`) and hands it to `firm_assets/trainer_launch.py`, which runs
the trainer subprocess `firm_assets/critics/train.py` through Dagster Pipes and records the cost and
lineage."""

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Output,
    PipesSubprocessClient,
    asset,
)

from firm_assets.automation import CRITIC_CONDITION, GPU_POOL
from firm_assets.critics.launch import TRAINING_CODE_VERSION, CriticSpec, critic_training
from firm_assets.critics.recipe import CriticTrainingConfig
from firm_assets.trainer_launch import launch_trainer
from resources.models import ModelsResource
from resources.tracking import TrackingResource
from resources.warehouse_resource import WarehouseResource

GROUP = "critics"
EDIT_CRITIC = CriticSpec(
    "firm_edit_critic",
    "firm_edit",
    "firm_edit_dataset",
    ("edit_execution", "edit_consistency"),
    "Edit critic: SFT of the critic base on the execution and consistency tasks of the exact "
    "firm_edit_dataset version; trained in a Pipes subprocess, registered in MLflow.",
)
GEN_CRITIC = CriticSpec(
    "firm_gen_critic",
    "firm_gen",
    "firm_gen_dataset",
    ("gen_instruction", "gen_quality"),
    "Generation critic: SFT on the instruction-following and quality tasks of the exact "
    "firm_gen_dataset version; trained in a Pipes subprocess, registered in MLflow.",
)


def critic_asset(spec: CriticSpec) -> AssetsDefinition:
    """The critic asset of a spec: trains on the spec's dataset asset, named and described by it."""

    @asset(
        name=spec.name,
        ins={"dataset": AssetIn(spec.dataset_asset)},
        automation_condition=CRITIC_CONDITION,
        pool=GPU_POOL,
        group_name=GROUP,
        code_version=TRAINING_CODE_VERSION,
        kinds={"transformers", "mlflow"},
        description=spec.description,
    )
    def critic(
        context: AssetExecutionContext,
        config: CriticTrainingConfig,
        dataset: pl.DataFrame,
        models: ModelsResource,
        warehouse: WarehouseResource,
        tracking: TrackingResource,
        pipes_subprocess_client: PipesSubprocessClient,
    ) -> Output[pl.DataFrame]:
        return launch_trainer(
            context,
            lambda wh: critic_training(spec, dataset, config, models, wh),
            models,
            warehouse,
            tracking,
            pipes_subprocess_client,
        )

    return critic


firm_edit_critic = critic_asset(EDIT_CRITIC)
firm_gen_critic = critic_asset(GEN_CRITIC)
