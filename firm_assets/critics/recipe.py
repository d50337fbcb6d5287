"""The SFT recipe: the paper's FIRM-Edit-8B hyper-parameters as defaults, which a profile may shrink
(cpu-tiny does) and run config may override.

FIRM trained its critics with LLaMA-Factory, and the public FIRM code (github.com/VisionXLab/FIRM-Reward)
ships no SFT config, so what the paper does not state is LLaMA-Factory's default
(github.com/hiyouga/LLaMA-Factory): `freeze_vision_tower` and `freeze_multi_modal_projector` true
(src/llamafactory/hparams/finetuning_args.py), `image_max_pixels` 768 * 768 and `image_min_pixels`
32 * 32 (src/llamafactory/hparams/model_args.py).

A critic's version hashes only the settings that change its weights (`version_recipe`). Left out:
`log_every`, `eval_every` (what is logged and when), `checkpoint_every` (where a killed run can
resume), `dataloader_workers` (who encodes the batches) and `gradient_checkpointing` (activations
recomputed instead of kept: the same numbers). The launch is in (`launch_identity`): the number of
processes multiplies the global batch, so a 2-process run trains other weights than a 1-process run of
the same recipe.
"""

import sys
from pathlib import Path
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
    "bf16": True,  # honoured where the device supports it (CUDA with bf16); fp32 elsewhere
    "gradient_checkpointing": True,
    "val_fraction": 0.02,  # held out by record hash; the paper's validation curve fell from ~0.58 to ~0.51
    "eval_every": 200,  # optimizer updates between validation losses (0: only at the end)
    "checkpoint_every": 200,  # optimizer updates between resumable checkpoints (0: none)
    "dataloader_workers": 4,  # processes that read and encode records beside the training loop
    # LLaMA-Factory's defaults for a VLM: only the language model is trained, and an image enters at
    # most at 768 x 768 pixels (576 visual tokens for Qwen3-VL's 32 px merged patches); the budget
    # is saved in the critic's processor, so bench and serving see images at the trained size
    "freeze_vision_tower": True,
    "freeze_multi_modal_projector": True,
    "image_max_pixels": 768 * 768,
    "image_min_pixels": 32 * 32,
}
# settings that change how training runs or is watched, never the weights it produces
NOT_IN_VERSION = (
    "log_every",
    "eval_every",
    "checkpoint_every",
    "dataloader_workers",
    "gradient_checkpointing",
)
ACCELERATE_DIR = Path(__file__).parent / "accelerate"
# shipped file -> the method it trains
ACCELERATE_CONFIGS = {
    "fsdp_8gpu_full": "full",
    "lora_1gpu": "lora",
    "ddp_cpu_2proc": "full",
    "fsdp2_cpu_2proc": "full",
}


class CriticTrainingConfig(Config):
    """Run config of a critic asset: recipe overrides and how the training process is launched."""

    method: str | None = Field(default=None, description="'full' or 'lora' (peft); default: the profile's.")
    learning_rate: float | None = None
    epochs: int | None = None
    per_device_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    seed: int | None = None
    gradient_checkpointing: bool | None = None
    val_fraction: float | None = None
    eval_every: int | None = None
    checkpoint_every: int | None = None
    dataloader_workers: int | None = None
    freeze_vision_tower: bool | None = None
    freeze_multi_modal_projector: bool | None = None
    image_max_pixels: int | None = None
    image_min_pixels: int | None = None
    dataset_version: str = Field(
        default="",
        description="Train on this registered version of the critic's dataset (a version or a unique "
        "prefix, e.g. one `firm import-dataset` printed) instead of the upstream asset's; it enters the "
        "critic's version as the upstream's does. Default: the upstream asset's version.",
    )
    accelerate_config: str = Field(
        default="none",
        description="A shipped accelerate config (critics/accelerate/<name>.yaml) that the training "
        "process is launched under with `accelerate launch`: 'fsdp_8gpu_full' (FSDP full fine-tuning "
        "on 8 GPUs), 'lora_1gpu', 'ddp_cpu_2proc' or 'fsdp2_cpu_2proc' (DDP or FSDP2 over 2 "
        "processes: CPU and gloo without CUDA), or 'none' (the launcher below).",
    )
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
    if not 0 <= recipe["val_fraction"] < 1:
        raise ValueError(f"val_fraction must be in [0, 1), not {recipe['val_fraction']!r}")
    for key in ("eval_every", "checkpoint_every", "dataloader_workers"):
        if recipe[key] < 0:
            raise ValueError(f"{key} must not be negative, not {recipe[key]!r}")
    if not 0 < recipe["image_min_pixels"] <= recipe["image_max_pixels"]:
        raise ValueError(
            f"need 0 < image_min_pixels <= image_max_pixels, not {recipe['image_min_pixels']!r} and"
            f" {recipe['image_max_pixels']!r}"
        )
    if recipe["method"] == "lora" and not (
        recipe["freeze_vision_tower"] and recipe["freeze_multi_modal_projector"]
    ):
        raise ValueError(
            "method lora adapts the language model only: the vision tower and projector stay frozen"
        )
    return recipe


def version_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The part of a recipe that a critic version hashes: every setting that changes the weights."""
    return {key: value for key, value in recipe.items() if key not in NOT_IN_VERSION}


def launch_identity(config: CriticTrainingConfig) -> dict[str, Any]:
    """What of the launch enters a critic's version: the shipped accelerate config or the run's own
    launcher, which decide how many processes share a global batch."""
    return {"accelerate_config": config.accelerate_config, "launcher": list(config.launcher)}


def launch_prefix(config: CriticTrainingConfig, method: str) -> list[str]:
    """The command prefix that runs the training module: the run's own launcher, this interpreter,
    or `accelerate launch` with a shipped config file (which must fit the recipe's method)."""
    name = config.accelerate_config
    if name == "none":
        return config.launcher or [sys.executable, "-m"]
    if name not in ACCELERATE_CONFIGS:
        raise ValueError(f"accelerate_config must be one of {['none', *ACCELERATE_CONFIGS]}, not {name!r}")
    if config.launcher:
        raise ValueError("give either launcher or accelerate_config, not both")
    if ACCELERATE_CONFIGS[name] != method:
        raise ValueError(
            f"accelerate_config {name} is for method {ACCELERATE_CONFIGS[name]!r}, not {method!r}"
        )
    config_file = ACCELERATE_DIR / f"{name}.yaml"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file), "-m"]
