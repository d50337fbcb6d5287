"""The shared step-checkpoint folder: atomic writes, completeness, pruning, RNG round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from firm_assets import checkpoints


def _fill(text: str):
    def fill(folder: Path) -> None:
        (folder / "weights.bin").write_text(text)
        (folder / "state.json").write_text("{}")

    return fill


def test_steps_are_written_whole_and_the_newest_kept(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        checkpoints.save_step(tmp_path, step, _fill(f"w{step}"), "state.json", keep=2)
    found = checkpoints.complete_checkpoints(tmp_path, "state.json")
    assert [step for step, _ in found] == [2, 3]
    assert (found[-1][1] / "weights.bin").read_text() == "w3"
    # the same step written again (a resumed run redoing it) replaces the folder
    checkpoints.save_step(tmp_path, 3, _fill("again"), "state.json", keep=2)
    assert (checkpoints.step_dir(tmp_path, 3) / "weights.bin").read_text() == "again"


def test_a_crashed_writer_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    def crash(folder: Path) -> None:
        (folder / "weights.bin").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        checkpoints.save_step(tmp_path, 5, crash, "state.json", keep=2)
    (tmp_path / "step-00000006").mkdir()  # a folder without its marker file is not complete either
    assert checkpoints.complete_checkpoints(tmp_path, "state.json") == []
    checkpoints.clear_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000006"]


def test_rng_state_round_trips() -> None:
    state = checkpoints.rng_state()
    drawn = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    checkpoints.restore_rng(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == drawn
