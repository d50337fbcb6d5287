"""`edit_rl_policy` and `gen_rl_policy`: DiffusionNFT LoRA policies rewarded by the trained critics
(CME for editing, QMA for generation), trained in a Pipes subprocess and recorded with their lineage."""

import json

import polars as pl
from dagster import (
    AssetExecutionContext,
    DataVersion,
    MetadataValue,
    Output,
    PipesSubprocessClient,
    asset,
)

from firm_assets.automation import GPU_POOL, POLICY_CONDITION
from firm_assets.rl.launch import TRAINING_CODE_VERSION, PolicySpec, train_rl_policy
from firm_assets.rl.settings import RLPolicyConfig
from resources.models import ModelsResource
from resources.tracking import TrackingResource
from resources.warehouse_resource import WarehouseResource

GROUP = "rl"
EDIT_POLICY = PolicySpec("edit_rl_policy", "edit", "firm_edit_critic", "source_images")
GEN_POLICY = PolicySpec("gen_rl_policy", "gen", "firm_gen_critic", "gen_prompts")


def _output(policy: pl.DataFrame, metadata: dict, tracking: TrackingResource) -> Output[pl.DataFrame]:
    row = policy.row(0, named=True)
    return Output(
        policy,
        data_version=DataVersion(row["version"]),
        metadata={
            **metadata,
            "policy_version": row["version"],
            "critic_version": row["critic_version"],
            "prompt_set_version": row["prompt_set_version"],
            "reward": MetadataValue.json(json.loads(row["reward"])),
            "final_step": row["final_step"],
            "final_loss": row["final_loss"],
            "mlflow_run_id": row["mlflow_run_id"],
            "mlflow_run": tracking.run_link(row["mlflow_run_id"]),
            "registered_model": MetadataValue.text(f"{row['registered_model']} v{row['model_version']}"),
            "lora_path": MetadataValue.path(row["lora_path"]),
        },
    )


@asset(
    automation_condition=POLICY_CONDITION,
    pool=GPU_POOL,
    group_name=GROUP,
    code_version=TRAINING_CODE_VERSION,
    kinds={"diffusers", "mlflow"},
    description="Editing policy: DiffusionNFT LoRA on the profile's editing pipeline, prompt groups keyed "
    "by (instruction, source image), rewarded by firm_edit_critic through CME.",
)
def edit_rl_policy(
    context: AssetExecutionContext,
    config: RLPolicyConfig,
    source_images: pl.DataFrame,
    firm_edit_critic: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
    tracking: TrackingResource,
    pipes_subprocess_client: PipesSubprocessClient,
) -> Output[pl.DataFrame]:
    """The editing policy, RL-trained against the editing critic's reward."""
    policy, metadata = train_rl_policy(
        context,
        EDIT_POLICY,
        source_images,
        firm_edit_critic,
        config,
        models,
        warehouse,
        tracking,
        pipes_subprocess_client,
    )
    return _output(policy, metadata, tracking)


@asset(
    automation_condition=POLICY_CONDITION,
    pool=GPU_POOL,
    group_name=GROUP,
    code_version=TRAINING_CODE_VERSION,
    kinds={"diffusers", "mlflow"},
    description="Generation policy: DiffusionNFT LoRA on the profile's text-to-image pipeline over the "
    "gen_prompts, rewarded by firm_gen_critic through QMA.",
)
def gen_rl_policy(
    context: AssetExecutionContext,
    config: RLPolicyConfig,
    gen_prompts: pl.DataFrame,
    firm_gen_critic: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
    tracking: TrackingResource,
    pipes_subprocess_client: PipesSubprocessClient,
) -> Output[pl.DataFrame]:
    """The generation policy, RL-trained against the generation critic's reward."""
    policy, metadata = train_rl_policy(
        context,
        GEN_POLICY,
        gen_prompts,
        firm_gen_critic,
        config,
        models,
        warehouse,
        tracking,
        pipes_subprocess_client,
    )
    return _output(policy, metadata, tracking)
