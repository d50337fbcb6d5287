"""A run's checkpoints: the three adapters, the optimizer, the loss history and the RNG, written
atomically through `firm_assets.checkpoints`, checked against the config on resume, and the final
adapters exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from peft import PeftModel

from firm_assets import checkpoints
from firm_assets.rl.nft.adapters import ADAPTERS, load_adapter, save_adapter
from firm_assets.rl.nft.config import NOT_IN_VERSION, NFTConfig

KEEP_CHECKPOINTS = 2
STATE_FILE = "state.json"  # written last: its presence marks a complete checkpoint
# Fields that may change between a run and its resume without changing the trajectory so far.
RESUMABLE_CHANGES = {"steps", *NOT_IN_VERSION}


def complete_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """This trainer's finished checkpoints, ignoring ones a crash left half-written."""
    return checkpoints.complete_checkpoints(checkpoint_dir, STATE_FILE)


def save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    config: NFTConfig,
    prompt_ids: list[str],
    losses: list[float],
    updates: int,
) -> None:
    """Adapters, optimizer and state of `step`; older checkpoints beyond KEEP_CHECKPOINTS go."""

    def fill(folder: Path) -> None:
        for adapter in ADAPTERS:
            save_adapter(model, adapter, folder / adapter)
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        state = {
            "step": step,
            "losses": losses,
            "updates": updates,  # optimizer updates made (a fully masked step makes none)
            "config": config.model_dump(),
            "prompt_ids": prompt_ids,
            "rng": checkpoints.rng_state(),
        }
        (folder / STATE_FILE).write_text(json.dumps(state))

    checkpoints.save_step(checkpoint_dir, step, fill, STATE_FILE, KEEP_CHECKPOINTS)


def check_resumable(state: dict, config: NFTConfig, prompt_ids: list[str], path: Path) -> None:
    """Refuses to resume a checkpoint made with other settings or prompts."""
    saved = state["config"]
    changed = sorted(
        key
        for key, value in config.model_dump().items()
        if key not in RESUMABLE_CHANGES and saved.get(key) != value
    )
    if changed:
        raise ValueError(
            f"checkpoint {path} was written with a different config ({', '.join(changed)}); use a new "
            "checkpoint_dir or the same settings"
        )
    if state["prompt_ids"] != prompt_ids:
        raise ValueError(
            f"checkpoint {path} was trained on a different prompt list; use a new checkpoint_dir"
        )
    if state["step"] > config.steps:
        raise ValueError(f"checkpoint {path} is already at step {state['step']}, past steps={config.steps}")


def load_checkpoint(
    path: Path, state: dict, model: PeftModel, optimizer: torch.optim.Optimizer, device: torch.device
) -> None:
    """Restores adapters, optimizer and random state, so training continues as if uninterrupted."""
    for adapter in ADAPTERS:
        load_adapter(model, adapter, path / adapter, device)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location=device))
    checkpoints.restore_rng(state["rng"])


def export(checkpoint_dir: Path, step_dir: Path) -> tuple[Path, Path]:
    """Copy the final trained and EMA adapters to checkpoint_dir/final, replacing older ones."""

    def fill(folder: Path) -> None:
        shutil.copytree(step_dir / "default", folder / "lora")
        shutil.copytree(step_dir / "ema", folder / "ema")
        (folder / "step").write_text(step_dir.name[len(checkpoints.STEP_PREFIX) :])

    final = checkpoints.write_atomically(checkpoint_dir / "final", fill)
    return final / "lora", final / "ema"
