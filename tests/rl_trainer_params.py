"""The parameters file of the RL trainer (`firm_assets.rl.train`, what the policy assets write) for
tests that run the trainer itself: tiny SD3, a rule reward, MLflow in a SQLite store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resources.tracking import TrackingResource


def trainer_params(home: Path, pipeline: Path, prompts: list[str], reward_fn: str, **nft: Any) -> dict:
    prompts_file = home / "prompts.jsonl"
    prompts_file.parent.mkdir(parents=True, exist_ok=True)
    prompts_file.write_text(
        "".join(
            json.dumps({"prompt_id": f"p{i}", "text": text, "source_path": None, "requirement": None}) + "\n"
            for i, text in enumerate(prompts)
        )
    )
    tracking = TrackingResource(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    settings = {
        "task": "gen",
        "pipeline_path": str(pipeline),
        "prompts_per_step": 2,
        "sampling_steps": 2,
        "size": 32,
        "lora_rank": 4,
        "lora_alpha": 8,
        **nft,
    }
    return {
        "policy": "gen_rl_policy",
        "version": home.name,
        "task": "gen",
        "nft": settings,
        "prompts_file": str(prompts_file),
        "reward_fn": reward_fn,
        "reward": {"reward_fn": reward_fn},
        "checkpoint_dir": str(home / "checkpoints"),
        "tracking_uri": tracking.uri(),
        "mlflow_run_id": tracking.create_run("firm-rl", home.name, {}),
        "grid_every": settings["steps"],
        "model_tags": {"policy_version": home.name},
    }
