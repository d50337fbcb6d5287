"""Step checkpoints of a training run, for both trainers (RL policies and critic SFT).

A checkpoint is a folder `step-NNNNNNNN` under the run's checkpoint folder. It is written under a
hidden temporary name and renamed when complete, so a crash never leaves a folder that looks
complete; the newest `keep` are kept. What goes inside is the trainer's business (it gets the
temporary folder to fill), sharded or whole: the critic trainer's FSDP2 state is one
torch.distributed.checkpoint file per rank, every rank filling the same temporary folder and rank 0
renaming it (`critics/train.py`, `save_checkpoint`). This module also saves and restores the
process's RNG streams.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"


def step_dir(folder: Path, step: int) -> Path:
    """One place names a step's checkpoint folder, so writers and resumers agree."""
    return folder / f"{STEP_PREFIX}{step:08d}"


def complete_checkpoints(folder: Path, marker: str) -> list[tuple[int, Path]]:
    """Finished checkpoints, oldest first: renamed folders that hold the `marker` file."""
    found = []
    for path in folder.glob(f"{STEP_PREFIX}*"):
        suffix = path.name[len(STEP_PREFIX) :]
        if path.is_dir() and suffix.isdigit() and (path / marker).is_file():
            found.append((int(suffix), path))
    return sorted(found)


def clear_partial(folder: Path) -> None:
    """Remove the temporary folders a crashed writer left."""
    for stale in folder.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale)


def write_atomically(final: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling folder of `final`, then put it in place of `final` (replacing an
    older folder of that name: the same step of the same trajectory, written before a resume)."""
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fill(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def prune(folder: Path, marker: str, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints."""
    for _, old in complete_checkpoints(folder, marker)[:-keep]:
        shutil.rmtree(old)


def save_step(folder: Path, step: int, fill: Callable[[Path], None], marker: str, keep: int) -> Path:
    """Write checkpoint `step` and prune all but the newest `keep` complete ones."""
    path = write_atomically(step_dir(folder, step), fill)
    prune(folder, marker, keep)
    return path


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as JSON-able lists."""
    numpy_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict) -> None:
    """Puts back the random state a checkpoint saved, so a resumed run draws as the uninterrupted one."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
