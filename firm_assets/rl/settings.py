"""Run config of the RL policy assets, and how it combines with the profile: the profile names the
base pipeline and its DiffusionNFT settings (tiny on cpu-tiny, the public trainers' on the GPU
profiles); run config overrides single settings and picks the reward."""

from typing import Any, Literal

from dagster import Config
from pydantic import Field

from firm_assets.critics.rewards import RewardConfig
from firm_assets.rl.nft.config import NFTConfig
from resources.profiles import PolicyConfig

Task = Literal["edit", "gen"]
NFT_OVERRIDES = ("steps", "prompts_per_step", "group_size", "sampling_steps", "size", "learning_rate", "seed")


class RLPolicyConfig(Config):
    """Run config of `edit_rl_policy` / `gen_rl_policy`. Unset numbers come from the profile."""

    steps: int | None = Field(default=None, description="Optimizer steps; default: the profile's.")
    prompts_per_step: int | None = None
    group_size: int | None = Field(default=None, description="Images per prompt group (k).")
    sampling_steps: int | None = Field(default=None, description="Denoising steps per rollout.")
    size: int | None = Field(default=None, description="Rollout image side in px.")
    learning_rate: float | None = None
    seed: int | None = None
    formula: str = Field(
        default="",
        description="cme | qma | execution_only | naive_sum; empty: CME for editing, QMA for generation.",
    )
    w1: float | None = Field(default=None, description="Base weight; default: FIRM's for the formula.")
    w2: float | None = Field(default=None, description="Bonus weight; default: FIRM's for the formula.")
    normalisation: str = Field(default="minus1_over4", description="minus1_over4 ((s-1)/4) or over5 (s/5).")
    score_mode: str = Field(
        default="expectation", description="parsed (the answer's digit) or expectation (over digit probs)."
    )
    reward_fn: str = Field(
        default="",
        description="A rule reward instead of the critic: an importable 'module:function' that takes the "
        "step's rollouts and returns one reward (or None, masked) each, e.g. "
        "'firm_assets.rl.rule_rewards:brightness'. Recorded in the policy version and lineage.",
    )
    held_out_critic: str = Field(
        default="",
        description="A critic folder or models:/<name>/<version> that scores the same rollouts for the "
        "reward-hacking divergence monitor; empty: the training critic's other score dimension.",
    )
    reward_server: str = Field(
        default="",
        description="Base URL of a `firm serve` reward server (e.g. http://gpu-host:8000) that scores the "
        "rollouts; its critic version goes into the policy version and lineage. Empty: the critic asset's "
        "latest version in the training process.",
    )
    reward_server_token_env: str = Field(
        default="", description="Environment variable holding the reward server's bearer token, if any."
    )
    reward_server_deadline_s: float | None = Field(
        default=None,
        gt=0,
        description="Longest one reward call to the server may take with its retries (a restarted "
        "server answers only once its critic has loaded); the step fails past it. Default: the "
        "client's, 15 minutes. Not in the policy version: it changes no reward.",
    )
    grid_every: int = Field(default=1, description="Log a sample grid to MLflow every N steps.")
    launcher: list[str] = Field(
        default=[],
        description="Command prefix that runs a Python module: one process, e.g. "
        "['/opt/firm/.venv/bin/python', '-m'], or one per device for data-parallel RL, e.g. "
        "['torchrun', '--nproc_per_node', '8', '-m']; default: this interpreter with -m.",
    )


def nft_settings(
    task: Task, pipeline_path: str, policy: PolicyConfig, config: RLPolicyConfig
) -> dict[str, Any]:
    """Every NFTConfig field: the profile's settings, then the run's overrides, plus task and pipeline;
    the rest at NFTConfig's defaults (the reference's), so they are recorded and versioned too."""
    run = {key: getattr(config, key) for key in NFT_OVERRIDES if getattr(config, key) is not None}
    return NFTConfig(**{**policy.nft, **run, "task": task, "pipeline_path": pipeline_path}).model_dump()


def reward_settings(task: Task, config: RLPolicyConfig) -> RewardConfig:
    """FIRM's reward for the task (CME for editing, QMA for generation) unless the run picks another
    formula; weights default to FIRM's for that task."""
    default = RewardConfig.cme() if task == "edit" else RewardConfig.qma()
    return RewardConfig(
        formula=config.formula or default.formula,
        w1=default.w1 if config.w1 is None else config.w1,
        w2=default.w2 if config.w2 is None else config.w2,
        normalisation=config.normalisation,
    )
