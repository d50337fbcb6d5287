"""Online RL of one policy with DiffusionNFT, rewarded by a critic or a named rule reward.

Runs as its own process, launched by the policy assets through Dagster Pipes (parameters arrive in a
JSON file), or as one process per device under torchrun (run config `launcher`, e.g.
`["torchrun", "--nproc_per_node", "8", "-m"]`): the ranks share every step's prompt groups
(`nft/parallel.py`); rank 0 alone talks to Dagster Pipes, logs to MLflow, writes checkpoints and
registers the policy. A rank that dies (kill -9, out of memory) ends the whole run: torchrun stops
the others, and a peer that notices first exits naming the failed collective; a relaunch resumes
from the newest checkpoint. Read it top to bottom: prompts -> reward function -> per-step tracking
-> train -> register -> report.

Resume: the checkpoint folder is keyed by the policy version, and `train_policy` continues from its
newest complete checkpoint; the step history (`steps.jsonl` beside the checkpoints) survives with it,
so the monitors the drift checks read cover the whole run, not only its last attempt.

By hand: python -m firm_assets.rl.train --params params.json
"""

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from firm_assets.critics.rewards import RewardConfig
from firm_assets.critics.scoring import CriticScorer, Scorer
from firm_assets.curation.costs import training_figures
from firm_assets.rl.critic_reward import critic_reward_fn
from firm_assets.rl.grids import sample_grid
from firm_assets.rl.nft import parallel
from firm_assets.rl.nft.config import NFTConfig
from firm_assets.rl.nft.loop import train_policy
from firm_assets.rl.nft.records import PromptItem, RewardFn, StepLog
from firm_assets.rl.rule_rewards import rule_reward_fn
from firm_assets.run_progress import progress_message
from firm_assets.serving.client import DEFAULT_DEADLINE_S
from firm_assets.serving.remote import RemoteScorer
from firm_assets.trainer_entry import read_params, reports_to_dagster, through_pipes
from resources.tracking import TrackingResource

HISTORY_FILE = "steps.jsonl"


def load_prompts(path: Path) -> tuple[list[PromptItem], dict[str, str | None]]:
    """The prompt groups the asset wrote (one JSON object a line) and each group's requirement."""
    items, requirements = [], {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        source = Image.open(row["source_path"]).convert("RGB") if row["source_path"] else None
        items.append(PromptItem(prompt_id=row["prompt_id"], text=row["text"], source=source))
        requirements[row["prompt_id"]] = row["requirement"]
    return items, requirements


def step_metrics(log: StepLog) -> dict[str, float]:
    """A step's numbers for MLflow and the drift checks; the loss and reward statistics of a step whose
    rewards were all masked (no update made) are left out, never written as 0."""
    metrics = {"masked_fraction": log.masked_fraction, "grad_norm": log.grad_norm}
    if math.isfinite(log.loss):
        metrics["loss"] = log.loss
    if log.reward_mean is not None:
        metrics["reward_mean"] = log.reward_mean
    if log.reward_std is not None:
        metrics["reward_std"] = log.reward_std
    return {**metrics, **log.monitors}


def append_history(path: Path, step: int, metrics: dict[str, float]) -> None:
    """Appends a step's metrics to the history file the asset reads back."""
    with path.open("a") as handle:
        handle.write(json.dumps({"step": step, "metrics": metrics}) + "\n")


def read_history(path: Path, final_step: int) -> list[dict[str, Any]]:
    """Step records up to `final_step`, one per step: a step redone after a resume replaces the
    record of its first attempt; steps past the final one (a killed attempt ran ahead of its last
    checkpoint) are dropped. A torn last line of a killed writer is skipped."""
    steps: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record["step"] <= final_step:
                steps[record["step"]] = record
    return [steps[step] for step in sorted(steps)]


class StepTracker:
    """The trainer's `on_step`: metrics and sample grids to MLflow, the step to the history file, and a
    line and a progress message to the Dagster log (a step takes long enough that each is worth one:
    this run's steps done of those it has left of `total_steps`, since a resumed run starts past
    step 0 and the view's ETA is the rate of this run's steps); it counts the rollouts of the steps it
    saw on every rank (this run's, for the cost)."""

    def __init__(
        self, tracking: TrackingResource, run_id: str, history: Path, grid_every: int, total_steps: int, log
    ) -> None:
        self.tracking, self.run_id, self.history = tracking, run_id, history
        self.grid_every, self.total_steps, self.log = grid_every, total_steps, log
        self.steps: list[int] = []
        self.rollouts = 0

    def __call__(self, step: StepLog) -> None:
        metrics = step_metrics(step)
        self.tracking.log_values(self.run_id, {}, metrics, step=step.step)
        append_history(self.history, step.step, metrics)
        if step.samples and step.step % self.grid_every == 0:
            grid = sample_grid(step.samples)
            self.tracking.log_image(self.run_id, grid, f"samples/step_{step.step:05d}.png")
        self.steps.append(step.step)
        self.rollouts += step.images
        reward = "masked" if step.reward_mean is None else f"{step.reward_mean:.4f}"
        self.log(f"step {step.step} loss {step.loss:.4f} reward {reward} masked {step.masked_fraction:.2f}")
        before = self.steps[0] - 1  # steps done before this run
        self.log(progress_message(len(self.steps), self.total_steps - before, "steps"))


def _load_scorer(source: str, critic: dict[str, Any]) -> CriticScorer:
    """A critic folder or registry URI loaded into this process."""
    return CriticScorer.load(
        source,
        device=critic["device"],
        dtype=critic["dtype"],
        max_new_tokens=critic["max_new_tokens"],
        guided=critic["guided"],
    )


def _remote_scorer(params: dict[str, Any]) -> RemoteScorer:
    """The configured reward server, waited for up to the run's deadline per call (else the client's)."""
    deadline = params["reward_server_deadline_s"] or DEFAULT_DEADLINE_S
    return RemoteScorer(params["reward_server"], params["reward_server_token_env"], deadline_s=deadline)


def build_reward_fn(params: dict[str, Any], requirements: dict[str, str | None]) -> tuple[RewardFn, str]:
    """The step's reward function and where its rewards come from (the lineage's critic_source):
    `reward_fn:<module:function>` for a rule reward, else the scoring critic's version."""
    if params.get("reward_fn"):
        return rule_reward_fn(params["reward_fn"]), f"reward_fn:{params['reward_fn']}"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not params["reward_server"] and params["critic"]["device"] != params["nft"]["device"]:
        raise ValueError(
            f"the critic is pinned to {params['critic']['device']} (profile critic_device), which every one "
            f"of the {world} ranks would load it onto; score a data-parallel run through `firm serve` "
            "(run config reward_server) or drop critic_device"
        )
    scorer: Scorer = (
        _remote_scorer(params)
        if params["reward_server"]
        else _load_scorer(params["critic"]["source"], params["critic"])
    )
    held_out = (
        _load_scorer(params["held_out_critic"], params["critic"]) if params["held_out_critic"] else None
    )
    reward = dict(params["reward"])
    mode = reward.pop("score_mode")
    reward_fn = critic_reward_fn(params["task"], scorer, RewardConfig(**reward), mode, requirements, held_out)
    return reward_fn, scorer.critic_version


def register_policy(tracking: TrackingResource, params: dict[str, Any], lora: Path, ema: Path) -> str:
    """Both LoRA folders and a policy.json naming the base pipeline, as one artifact `policy`,
    registered as a model version of the policy (once per policy version)."""
    with tempfile.TemporaryDirectory() as staging:
        folder = Path(staging)
        shutil.copytree(lora, folder / "lora")
        shutil.copytree(ema, folder / "ema_lora")
        described = {key: params[key] for key in ("policy", "version", "task", "reward", "model_tags")}
        (folder / "policy.json").write_text(json.dumps({**described, "nft": params["nft"]}, indent=1))
        return tracking.register_folder_model(
            params["mlflow_run_id"],
            params["policy"],
            str(folder),
            "policy",
            params["model_tags"],
            unique_tag="policy_version",
        )


def train(params: dict[str, Any], log: Callable[[str], None], report) -> dict[str, Any]:
    # prompts
    """Builds prompts, reward and policy from the asset's parameters and runs RL training."""
    prompts, requirements = load_prompts(Path(params["prompts_file"]))

    # reward function: a named rule reward, or a critic (the reward server's or one in this process,
    # plus an optional held-out critic for the divergence monitor)
    reward_fn, reward_source = build_reward_fn(params, requirements)

    # per-step tracking (rank 0)
    ranks = parallel.start(params["nft"].get("device", "cpu"))
    checkpoints = Path(params["checkpoint_dir"])
    checkpoints.mkdir(parents=True, exist_ok=True)
    tracking = TrackingResource(tracking_uri=params["tracking_uri"])
    tracker = StepTracker(
        tracking,
        params["mlflow_run_id"],
        checkpoints / HISTORY_FILE,
        params["grid_every"],
        params["nft"]["steps"],
        log,
    )

    # train (resumes from the newest complete checkpoint)
    started = time.perf_counter()
    config = NFTConfig(**params["nft"])
    try:
        result = train_policy(config, prompts, reward_fn, checkpoints, on_step=tracker, ranks=ranks)
    finally:
        parallel.stop()
    train_seconds = time.perf_counter() - started
    if not ranks.main:
        return {"final_step": result.final_step, "rank": ranks.rank}

    # register and report
    model_version = register_policy(tracking, params, result.lora_dir, result.ema_lora_dir)
    summary = {
        "final_step": result.final_step,
        "losses": result.losses,
        "lora_dir": str(result.lora_dir),
        "ema_lora_dir": str(result.ema_lora_dir),
        "model_version": model_version,
        "critic_source": reward_source,
        "history": read_history(checkpoints / HISTORY_FILE, result.final_step),
        "steps_this_run": len(tracker.steps),
        "resumed_from_step": min(tracker.steps) - 1 if tracker.steps else result.final_step,
        "train_seconds": round(train_seconds, 2),
        "ranks": ranks.world,
        # the materialization's cost: this run's rollouts on every rank (each one generated image),
        # and its wall time on each of the ranks
        "cost": training_figures(
            train_seconds,
            config.device.startswith("cuda"),
            ranks.world,
            model_calls=tracker.rollouts,
            images_generated=tracker.rollouts,
        ),
    }
    report(summary)
    return summary


def main() -> None:
    """Subprocess entry point: trains a policy from the parameters file the asset wrote."""
    params = read_params(__doc__, "policy asset")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        if not reports_to_dagster():
            summary = train(params, lambda line: print(f"[rank {rank}] {line}", flush=True), lambda _: None)
            shown = ("final_step", "resumed_from_step", "ranks", "cost")
            print(json.dumps({key: summary[key] for key in shown if key in summary}), flush=True)
            return
        through_pipes(partial(train, params))
    except (torch.distributed.DistError, RuntimeError) as error:
        if world == 1:
            raise
        first_line = str(error).splitlines()[0] if str(error) else ""
        sys.exit(
            f"firm_assets.rl.train rank {rank} of {world} stopped: {type(error).__name__}: {first_line}. "
            "A collective fails like this when another rank is gone (killed, out of memory); the run "
            "stops, and launching it again resumes from the newest checkpoint."
        )


if __name__ == "__main__":
    main()
