"""`edit_rl_policy` and `gen_rl_policy`: DiffusionNFT LoRA policies rewarded by the trained critics
(CME for editing, QMA for generation).

Both come from `policy_asset` and differ only in their `PolicySpec`. A materialization builds the
version's `PolicyTraining` (`launch.py`) and hands it to `firm_assets/trainer_launch.py`, which runs
the trainer subprocess `firm_assets/rl/train.py` (DiffusionNFT itself: `nft/loop.py`) through
Dagster Pipes and records the cost and lineage."""

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Output,
    PipesSubprocessClient,
    asset,
)

from firm_assets.automation import GPU_POOL, POLICY_CONDITION
from firm_assets.rl.launch import TRAINING_CODE_VERSION, PolicySpec, policy_training
from firm_assets.rl.settings import RLPolicyConfig
from firm_assets.trainer_launch import launch_trainer
from resources.models import ModelsResource
from resources.tracking import TrackingResource
from resources.warehouse_resource import WarehouseResource

GROUP = "rl"
EDIT_POLICY = PolicySpec(
    "edit_rl_policy",
    "edit",
    "firm_edit_critic",
    "source_images",
    "Editing policy: DiffusionNFT LoRA on the profile's editing pipeline, prompt groups keyed "
    "by (instruction, source image), rewarded by firm_edit_critic through CME.",
)
GEN_POLICY = PolicySpec(
    "gen_rl_policy",
    "gen",
    "firm_gen_critic",
    "gen_prompts",
    "Generation policy: DiffusionNFT LoRA on the profile's text-to-image pipeline over the "
    "gen_prompts, rewarded by firm_gen_critic through QMA.",
)


def policy_asset(spec: PolicySpec) -> AssetsDefinition:
    """The policy asset of a spec: reads the spec's prompt source and critic, named and described by it."""

    @asset(
        name=spec.name,
        ins={"prompt_source": AssetIn(spec.prompt_set), "critic": AssetIn(spec.critic)},
        automation_condition=POLICY_CONDITION,
        pool=GPU_POOL,
        group_name=GROUP,
        code_version=TRAINING_CODE_VERSION,
        kinds={"diffusers", "mlflow"},
        description=spec.description,
    )
    def policy(
        context: AssetExecutionContext,
        config: RLPolicyConfig,
        prompt_source: pl.DataFrame,
        critic: pl.DataFrame,
        models: ModelsResource,
        warehouse: WarehouseResource,
        tracking: TrackingResource,
        pipes_subprocess_client: PipesSubprocessClient,
    ) -> Output[pl.DataFrame]:
        return launch_trainer(
            context,
            lambda wh: policy_training(spec, prompt_source, critic, config, models, wh),
            models,
            warehouse,
            tracking,
            pipes_subprocess_client,
        )

    return policy


edit_rl_policy = policy_asset(EDIT_POLICY)
gen_rl_policy = policy_asset(GEN_POLICY)
