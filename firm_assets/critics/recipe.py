"""The SFT recipe: the paper's FIRM-Edit-8B hyper-parameters as defaults, which a profile may shrink
(cpu-tiny does) and run config may override."""

from typing import Any

from dagster import Config
from pydantic import Field

PAPER_RECIPE: dict[str, Any] = {
    "learning_rate": 1e-5,
    "per_device_batch_size": 10,
    "gradient_accumulation_steps": 2,
    "warmup_ratio": 0.1,
    "epochs": 1,
    "seed": 42,
    "method": "full",
    "lora_rank": 32,
    "max_grad_norm": 1.0,
    "log_every": 10,
    "bf16": True,
}


class CriticTrainingConfig(Config):
    """Run config of a critic asset: recipe overrides and how the training process is launched."""

    method: str | None = Field(default=None, description="'full' or 'lora' (peft); default: the profile's.")
    learning_rate: float | None = None
    epochs: int | None = None
    per_device_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    seed: int | None = None
    launcher: list[str] = Field(
        default=[],
        description="Command prefix that runs a Python module, e.g. ['accelerate', 'launch', "
        "'--num_processes', '8', '-m'] or ['torchrun', '--nproc-per-node', '8', '-m']; "
        "default: this interpreter with -m.",
    )


def effective_recipe(profile_overrides: dict[str, Any], config: CriticTrainingConfig) -> dict[str, Any]:
    """Paper defaults, then the profile's overrides, then the run's."""
    run = {
        key: value for key, value in config.model_dump().items() if key in PAPER_RECIPE and value is not None
    }
    recipe = {**PAPER_RECIPE, **profile_overrides, **run}
    if recipe["method"] not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora', not {recipe['method']!r}")
    return recipe
