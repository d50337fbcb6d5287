"""Train one RL policy version through Dagster Pipes and record its lineage; skip the work when the
same version (same base weights, critic version, reward, prompt set, NFT config and code) exists.

A killed run resumes: the checkpoint folder is keyed by the policy version under FIRM_HOME, and the
trainer continues from its newest complete checkpoint.

Each materialization records its cost (`firm cost`): the asset's and the trainer's CPU seconds, and
one line for the policy's base pipeline (stage `nft`, backend diffusers) with the trainer's wall time
as model seconds (GPU seconds on CUDA) and this run's rollouts as calls and images generated. A skip
records its seconds and no model line."""

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from dagster import AssetExecutionContext, PipesSubprocessClient

from firm_assets.curation.costs import CostMeter
from firm_assets.curation.versioning import frame_version, short_hash
from firm_assets.rl.nft.config import NOT_IN_VERSION
from firm_assets.rl.rule_rewards import load_rule_reward
from firm_assets.rl.settings import RLPolicyConfig, Task, nft_settings, reward_settings
from resources.chat import ModelRef
from resources.home import firm_home
from resources.models import ModelsResource, resolve_model_path
from resources.tracking import TrackingResource, dagster_tags, process_tags
from resources.warehouse_resource import WarehouseResource
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
    """What differs between the editing and the generation policy."""

    name: str
    task: Task
    critic: str
    prompt_set: str  # the upstream asset the prompts come from


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


def policy_run(tracking: TrackingResource, folder: Path, name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The MLflow run of a policy version's training: the run of an earlier attempt that did not
    finish (its id in the params file beside the checkpoints) reopened, so a resumed run's step
    curve continues in the same run, else a new run. Returns (run id, reopened)."""
    from mlflow.exceptions import MlflowException

    previous = folder / PARAMS_FILE
    if previous.exists():
        run_id = json.loads(previous.read_text())["mlflow_run_id"]
        client = tracking.client()
        try:
            run = client.get_run(run_id)
        except MlflowException:
            run = None
        if run is not None and run.info.lifecycle_stage == "active" and run.info.status != "FINISHED":
            for key, value in process_tags().items():  # owned by this process from now on
                client.set_tag(run_id, key, value)
            client.set_tag(run_id, "firm.reopened_by_run", tags.get("dagster.run_id", ""))
            client.update_run(run_id, status="RUNNING")
            return run_id, True
    return tracking.create_run(EXPERIMENT, name, tags), False


def server_critic_version(config: RLPolicyConfig) -> str:
    """The critic version the configured reward server scores with (it must be up and ready)."""
    from firm_assets.serving.remote import RemoteScorer

    scorer = RemoteScorer(config.reward_server, config.reward_server_token_env)
    scorer.client.close()
    return scorer.critic_version


def _existing(warehouse: Warehouse, policy: str, version: str) -> pl.DataFrame:
    columns = ", ".join(POLICY_SCHEMA)
    return warehouse.query(
        f"SELECT {columns} FROM policy_versions WHERE policy = ? AND version = ?", [policy, version]
    ).cast(POLICY_SCHEMA)


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


def _record_policy(
    warehouse: Warehouse, row: dict[str, Any], history: list[dict[str, Any]], run: str
) -> None:
    """The lineage row and every step's monitors, in one transaction."""
    monitors = [
        (row["policy"], row["version"], entry["step"], metric, float(value))
        for entry in history
        for metric, value in entry["metrics"].items()
    ]
    with warehouse.transaction() as con:
        con.execute(
            f"INSERT OR REPLACE INTO policy_versions ({', '.join(row)}, dagster_run_id) VALUES"
            f" ({', '.join('?' * len(row))}, ?)",
            [*row.values(), run],
        )
        con.execute(
            "DELETE FROM policy_monitors WHERE policy = ? AND version = ?", [row["policy"], row["version"]]
        )
        if monitors:
            con.executemany("INSERT INTO policy_monitors VALUES (?, ?, ?, ?, ?)", monitors)


def train_rl_policy(
    context: AssetExecutionContext,
    spec: PolicySpec,
    prompt_frame: pl.DataFrame,
    critic_frame: pl.DataFrame,
    config: RLPolicyConfig,
    models: ModelsResource,
    warehouse: WarehouseResource,
    tracking: TrackingResource,
    pipes: PipesSubprocessClient,
) -> tuple[pl.DataFrame, dict]:
    """The policy row (trained now or found) and metadata for the materialization."""
    meter = CostMeter()
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
    reward_json = json.dumps(reward, sort_keys=True)
    prompts_version = prompt_set_version(prompts)
    # the version names the model, not the folder it was resolved to on this machine
    # a reward server scores with the critic it serves: that critic's version is the one trained against
    critic_used = server_critic_version(config) if config.reward_server else critic["version"]
    if config.reward_fn:
        load_rule_reward(config.reward_fn)  # a wrong path fails here, before any work
    version = policy_version(
        policy.model, revision, critic_used, reward_json, prompts_version, {**nft, "pipeline_path": ""}
    )
    wh = warehouse.get()
    prompts_file = _record_prompts(wh, spec, prompts_version, prompts)
    existing = _existing(wh, spec.name, version)
    if existing.height and Path(existing["lora_path"][0]).exists():
        context.log.info(f"{spec.name} {version} already trained with {spec.critic} {critic['version']}")
        meter.record(context, wh, version)
        return existing, {"trained": False}

    folder = firm_home() / "rl" / spec.name / version
    folder.mkdir(parents=True, exist_ok=True)
    run_id, resumed = policy_run(
        tracking, folder, f"{spec.name}-{version[:8]}", dagster_tags(context, version)
    )
    params = {
        "policy": spec.name,
        "version": version,
        "task": spec.task,
        "nft": nft,
        "prompts_file": str(prompts_file),
        "critic": {
            "source": critic["path"],
            "device": policy.critic_device or nft["device"],
            "dtype": nft.get("dtype", "float32"),
            "max_new_tokens": profile.critic.max_new_tokens,
            "guided": profile.guided,
        },
        "reward_fn": config.reward_fn,
        "held_out_critic": config.held_out_critic,
        "reward_server": config.reward_server,
        "reward_server_token_env": config.reward_server_token_env,
        "reward": reward,
        "checkpoint_dir": str(folder / "checkpoints"),
        "tracking_uri": tracking.uri(),
        "mlflow_run_id": run_id,
        "grid_every": config.grid_every,
        "model_tags": {
            "policy_version": version,
            "critic": spec.critic,
            "critic_version": critic["version"],
            "prompt_set_version": prompts_version,
        },
    }
    params_file = folder / PARAMS_FILE
    params_file.write_text(json.dumps(params, indent=1))
    if not resumed:  # a reopened run has them already (and MLflow params cannot change)
        tracking.log_values(
            run_id,
            {
                **{f"nft.{k}": v for k, v in nft.items()},
                **{f"reward.{k}": v for k, v in reward.items()},
                "base_model": policy.model,
                "base_revision": revision,
                "critic": spec.critic,
                "critic_version": critic["version"],
                "critic_registered": f"{critic['registered_model']} v{critic['model_version']}",
                "prompt_set": spec.prompt_set,
                "prompt_set_version": prompts_version,
                "prompts": prompts.height,
                "held_out_critic": config.held_out_critic or "(other score dimension)",
                "reward_server": config.reward_server or "(critic in the training process)",
            },
            {},
        )
    launcher = config.launcher or [sys.executable, "-m"]
    models.release_for_subprocess()
    try:
        invocation = pipes.run(
            context=context, command=[*launcher, TRAIN_MODULE, "--params", str(params_file)]
        )
        summary = invocation.get_custom_messages()[-1]
    except Exception:
        tracking.finish(run_id, "FAILED")
        raise
    tracking.finish(run_id)
    row = {
        "policy": spec.name,
        "version": version,
        "critic": spec.critic,
        "critic_version": critic["version"],
        "critic_source": summary["critic_source"],
        "reward": reward_json,
        "prompt_set": spec.prompt_set,
        "prompt_set_version": prompts_version,
        "base_model": policy.model,
        "base_revision": revision,
        "config": json.dumps(nft, sort_keys=True),
        "final_step": summary["final_step"],
        "final_loss": summary["losses"][-1] if summary["losses"] else None,
        "lora_path": summary["lora_dir"],
        "ema_lora_path": summary["ema_lora_dir"],
        "checkpoint_dir": params["checkpoint_dir"],
        "mlflow_run_id": run_id,
        "registered_model": spec.name,
        "model_version": summary["model_version"],
    }
    _record_policy(wh, row, summary["history"], context.run_id)
    meter.add_training("nft", ModelRef(policy.model, revision, backend="diffusers"), summary["cost"])
    meter.record(context, wh, version)
    metadata = {
        "trained": True,
        "steps_this_run": summary["steps_this_run"],
        "resumed_from_step": summary["resumed_from_step"],
        "train_seconds": summary["train_seconds"],
        "images_generated": summary["cost"]["images_generated"],
    }
    return pl.DataFrame([row], schema=POLICY_SCHEMA), metadata
