"""One policy version as a `TrainerJob`: what `firm_assets/trainer_launch.py` needs to train it.

Runs in the Dagster process (the policy assets, `assets.py`, build it); the trainer it launches,
`train.py`, runs in its own process (or one per device under torchrun). The version hashes the base
weights, the critic version, the reward, the prompt set, the NFT settings and the code. A killed run
resumes: the checkpoint folder is keyed by the policy version under FIRM_HOME, the trainer continues
from its newest complete checkpoint, and the unfinished MLflow run is reopened. Its cost line: the
policy's base pipeline (stage `nft`, backend diffusers), this run's rollouts as calls and images
generated."""

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from dagster import MetadataValue

from firm_assets.curation.versioning import frame_version, short_hash
from firm_assets.rl.nft.config import NOT_IN_VERSION
from firm_assets.rl.rule_rewards import load_rule_reward
from firm_assets.rl.settings import RLPolicyConfig, Task, nft_settings, reward_settings
from firm_assets.trainer_launch import TrainerJob
from resources.chat import ModelRef
from resources.home import firm_home
from resources.models import ModelsResource, resolve_model_path
from resources.tracking import TrackingResource
from resources.weights import weights_identity
from warehouse.connection import Warehouse

TRAIN_MODULE = "firm_assets.rl.train"
PARAMS_FILE = "params.json"
TRAINING_CODE_VERSION = "nft@2"  # 2: reference schedules, DPM-Solver rollouts, data parallel
EXPERIMENT = "firm-rl"

PROMPT_SET_SCHEMA = {
    "prompt_id": pl.String,
    "text": pl.String,
    "source_sha": pl.String,
    "requirement": pl.String,
    "source_path": pl.String,
}
POLICY_SCHEMA = {
    "policy": pl.String,
    "version": pl.String,
    "critic": pl.String,
    "critic_version": pl.String,
    "critic_source": pl.String,
    "reward": pl.String,
    "prompt_set": pl.String,
    "prompt_set_version": pl.String,
    "base_model": pl.String,
    "base_revision": pl.String,
    "config": pl.String,
    "final_step": pl.Int64,
    "final_loss": pl.Float64,
    "lora_path": pl.String,
    "ema_lora_path": pl.String,
    "checkpoint_dir": pl.String,
    "mlflow_run_id": pl.String,
    "registered_model": pl.String,
    "model_version": pl.String,
}


@dataclass(frozen=True)
class PolicySpec:
    """What differs between the editing and the generation policy: the asset (name, description), its
    task, and the assets it reads (the critic, and the prompt set's source)."""

    name: str
    task: Task
    critic: str
    prompt_set: str  # the upstream asset the prompts come from
    description: str


def prompt_set(spec: PolicySpec, upstream: pl.DataFrame) -> pl.DataFrame:
    """The policy's prompt groups from its prompt asset, one row per group: editing groups are keyed
    by (instruction, source image sha), so one instruction on two images is two groups and a request
    repeated on the same image is one (its first requirement kept)."""
    if spec.task == "edit":
        frame = upstream.select(
            pl.struct("instruction", "source_sha")
            .map_elements(lambda r: short_hash(r["instruction"], r["source_sha"]), return_dtype=pl.String)
            .alias("prompt_id"),
            pl.col("instruction").alias("text"),
            "source_sha",
            "requirement",
            pl.col("source_path"),
        )
    else:
        frame = upstream.select(
            "prompt_id",
            pl.col("prompt").alias("text"),
            pl.lit(None, pl.String).alias("source_sha"),
            pl.lit(None, pl.String).alias("requirement"),
            pl.lit(None, pl.String).alias("source_path"),
        )
    return (
        frame.unique("prompt_id", keep="first", maintain_order=True).sort("prompt_id").cast(PROMPT_SET_SCHEMA)
    )


def prompt_set_version(prompts: pl.DataFrame) -> str:
    """Content hash of the groups (where a source image is stored is not part of it)."""
    return frame_version(prompts.drop("source_path"), "prompt_id")


def policy_version(
    model: str, revision: str, critic_version: str, reward: str, prompts: str, nft: dict[str, Any]
) -> str:
    """The hash of everything that changes the trained weights; NFT settings that do not
    (`NOT_IN_VERSION`, e.g. checkpoint_every) are left out."""
    nft = {key: value for key, value in nft.items() if key not in NOT_IN_VERSION}
    return short_hash(
        model,
        revision,
        critic_version,
        reward,
        prompts,
        json.dumps(nft, sort_keys=True),
        TRAINING_CODE_VERSION,
    )


def server_critic_version(config: RLPolicyConfig) -> str:
    """The critic version the configured reward server scores with (it must be up and ready)."""
    from firm_assets.serving.remote import RemoteScorer

    scorer = RemoteScorer(config.reward_server, config.reward_server_token_env)
    scorer.client.close()
    return scorer.critic_version


def _record_prompts(warehouse: Warehouse, spec: PolicySpec, version: str, prompts: pl.DataFrame) -> Path:
    """Store the prompt set's rows (once per version) and the file the trainer reads them from."""
    path = firm_home() / "rl" / "prompt_sets" / spec.prompt_set / f"{version}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        prompts.write_ndjson(tmp)
        tmp.replace(path)
    with warehouse.transaction() as con:
        con.register("prompt_frame", prompts.drop("source_path").to_arrow())
        con.execute(
            "INSERT INTO rl_prompt_sets SELECT ?, ?, prompt_id, text, source_sha, requirement"
            " FROM prompt_frame ON CONFLICT DO NOTHING",
            [spec.prompt_set, version],
        )
        con.unregister("prompt_frame")
    return path


@dataclass(frozen=True, kw_only=True, eq=False)
class PolicyTraining(TrainerJob):
    """One policy version: its base pipeline, critic, reward and prompt set, and the NFT settings."""

    spec: PolicySpec
    config: RLPolicyConfig
    critic: dict[str, Any]  # the critic row (version, path, registered model); empty with a rule reward
    prompts: pl.DataFrame
    prompts_version: str
    prompts_file: Path
    nft: dict[str, Any]
    reward: dict[str, Any]
    critic_runtime: dict[str, Any]  # where and how the trainer runs the critic

    @property
    def folder(self) -> Path:
        """The version's folder: the parameters file and the checkpoints."""
        return self.params_file.parent

    def existing(self, warehouse: Warehouse) -> pl.DataFrame | None:
        found = warehouse.query(
            f"SELECT {', '.join(POLICY_SCHEMA)} FROM policy_versions WHERE policy = ? AND version = ?",
            [self.spec.name, self.version],
        ).cast(POLICY_SCHEMA)
        return found if found.height and Path(found["lora_path"][0]).exists() else None

    def params(self, run_id: str, tracking_uri: str) -> dict[str, Any]:
        config = self.config
        return {
            "policy": self.spec.name,
            "version": self.version,
            "task": self.spec.task,
            "nft": self.nft,
            "prompts_file": str(self.prompts_file),
            "critic": {"source": self.critic["path"], **self.critic_runtime},
            "reward_fn": config.reward_fn,
            "held_out_critic": config.held_out_critic,
            "reward_server": config.reward_server,
            "reward_server_token_env": config.reward_server_token_env,
            "reward_server_deadline_s": config.reward_server_deadline_s,
            "reward": self.reward,
            "checkpoint_dir": str(self.folder / "checkpoints"),
            "tracking_uri": tracking_uri,
            "mlflow_run_id": run_id,  # a relaunch reopens this run while it is unfinished
            "grid_every": config.grid_every,
            "model_tags": {
                "policy_version": self.version,
                "critic": self.spec.critic,
                "critic_version": self.critic["version"],
                "prompt_set_version": self.prompts_version,
            },
        }

    def log_run(self, tracking: TrackingResource, run_id: str) -> None:
        critic, config = self.critic, self.config
        tracking.log_values(
            run_id,
            {
                **{f"nft.{k}": v for k, v in self.nft.items()},
                **{f"reward.{k}": v for k, v in self.reward.items()},
                "base_model": self.base.model_id,
                "base_revision": self.base.revision,
                "critic": self.spec.critic,
                "critic_version": critic["version"],
                "critic_registered": f"{critic['registered_model']} v{critic['model_version']}",
                "prompt_set": self.spec.prompt_set,
                "prompt_set_version": self.prompts_version,
                "prompts": self.prompts.height,
                "held_out_critic": config.held_out_critic or "(other score dimension)",
                "reward_server": config.reward_server or "(critic in the training process)",
            },
            {},
        )

    def row(self, run_id: str, summary: dict) -> dict[str, Any]:
        return {
            "policy": self.spec.name,
            "version": self.version,
            "critic": self.spec.critic,
            "critic_version": self.critic["version"],
            "critic_source": summary["critic_source"],
            "reward": json.dumps(self.reward, sort_keys=True),
            "prompt_set": self.spec.prompt_set,
            "prompt_set_version": self.prompts_version,
            "base_model": self.base.model_id,
            "base_revision": self.base.revision,
            "config": json.dumps(self.nft, sort_keys=True),
            "final_step": summary["final_step"],
            "final_loss": summary["losses"][-1] if summary["losses"] else None,
            "lora_path": summary["lora_dir"],
            "ema_lora_path": summary["ema_lora_dir"],
            "checkpoint_dir": str(self.folder / "checkpoints"),
            "mlflow_run_id": run_id,
            "registered_model": self.spec.name,
            "model_version": summary["model_version"],
        }

    def record(self, warehouse: Warehouse, row: dict[str, Any], summary: dict, dagster_run_id: str) -> None:
        """The lineage row and every step's monitors, in one transaction."""
        monitors = [
            (row["policy"], row["version"], entry["step"], metric, float(value))
            for entry in summary["history"]
            for metric, value in entry["metrics"].items()
        ]
        with warehouse.transaction() as con:
            con.execute(
                f"INSERT OR REPLACE INTO policy_versions ({', '.join(row)}, dagster_run_id) VALUES"
                f" ({', '.join('?' * len(row))}, ?)",
                [*row.values(), dagster_run_id],
            )
            con.execute(
                "DELETE FROM policy_monitors WHERE policy = ? AND version = ?",
                [row["policy"], row["version"]],
            )
            if monitors:
                con.executemany("INSERT INTO policy_monitors VALUES (?, ?, ?, ?, ?)", monitors)

    def metadata(self, summary: dict) -> dict[str, Any]:
        return {
            "steps_this_run": summary["steps_this_run"],
            "resumed_from_step": summary["resumed_from_step"],
            "train_seconds": summary["train_seconds"],
            "images_generated": summary["cost"]["images_generated"],
        }

    def describe(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "policy_version": row["version"],
            "critic_version": row["critic_version"],
            "prompt_set_version": row["prompt_set_version"],
            "reward": MetadataValue.json(json.loads(row["reward"])),
            "final_step": row["final_step"],
            "lora_path": MetadataValue.path(row["lora_path"]),
        }


def policy_training(
    spec: PolicySpec,
    prompt_frame: pl.DataFrame,
    critic_frame: pl.DataFrame,
    config: RLPolicyConfig,
    models: ModelsResource,
    warehouse: Warehouse,
) -> PolicyTraining:
    """The policy version the prompts, the critic, the profile's `rl` entry and the run config make;
    its prompt set is stored on the way (once per version)."""
    if critic_frame.is_empty() and not config.reward_fn:
        raise ValueError(f"{spec.critic} has no trained version: nothing to reward {spec.name} with")
    prompts = prompt_set(spec, prompt_frame)
    if prompts.is_empty():
        raise ValueError(f"{spec.prompt_set} is empty: no prompts to train {spec.name} on")
    # with a rule reward (`reward_fn`) no critic is used: its columns are recorded empty
    critic = (
        dict.fromkeys(("version", "path", "registered_model", "model_version"), "")
        if config.reward_fn
        else critic_frame.row(0, named=True)
    )
    profile = models.settings()
    policy = profile.rl[spec.task]
    pipeline_path = resolve_model_path(policy.model)
    revision = weights_identity(pipeline_path, policy.revision)
    nft = nft_settings(spec.task, pipeline_path, policy, config)
    reward = (
        {"reward_fn": config.reward_fn}
        if config.reward_fn
        else {**reward_settings(spec.task, config).model_dump(), "score_mode": config.score_mode}
    )
    prompts_version = prompt_set_version(prompts)
    # a reward server scores with the critic it serves: the version, lineage and tags name that critic
    if config.reward_server:
        critic = {**critic, "version": server_critic_version(config)}
    if config.reward_fn:
        load_rule_reward(config.reward_fn)  # a wrong path fails here, before any work
    # the version names the model, not the folder it was resolved to on this machine
    version = policy_version(
        policy.model,
        revision,
        critic["version"],
        json.dumps(reward, sort_keys=True),
        prompts_version,
        {**nft, "pipeline_path": ""},
    )
    return PolicyTraining(
        asset=spec.name,
        version=version,
        trained_on=f"with {spec.critic} {critic['version']}",
        trainer=TRAIN_MODULE,
        launcher=config.launcher or [sys.executable, "-m"],
        params_file=firm_home() / "rl" / spec.name / version / PARAMS_FILE,
        experiment=EXPERIMENT,
        reopens_run=True,
        stage="nft",
        base=ModelRef(policy.model, revision, backend="diffusers"),
        schema=POLICY_SCHEMA,
        spec=spec,
        config=config,
        critic=critic,
        prompts=prompts,
        prompts_version=prompts_version,
        prompts_file=_record_prompts(warehouse, spec, prompts_version, prompts),
        nft=nft,
        reward=reward,
        critic_runtime={
            "device": policy.critic_device or nft["device"],
            "dtype": nft.get("dtype", "float32"),
            "max_new_tokens": profile.critic.max_new_tokens,
            "guided": profile.guided,
        },
    )
