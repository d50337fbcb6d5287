"""The critic's training process as its asset launches it, run by a test in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from firm_assets.critics.launch import TRAIN_MODULE

REPO = Path(__file__).resolve().parent.parent


def train_critic(
    params: Path, launcher: Sequence[str] = (sys.executable, "-m"), timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """`LAUNCHER firm_assets.critics.train --params PARAMS` (launcher: python or accelerate, ending in
    -m) with `env` added, output captured. One thread: the tiny model's matrices gain nothing from
    more, it keeps runs deterministic, and on the busy 2-core development machine two threads made
    each update about five times slower."""
    return subprocess.run(
        [*launcher, TRAIN_MODULE, "--params", str(params)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_summary(run: subprocess.CompletedProcess) -> dict:
    """The summary a training run prints as its last stdout line; the run must have succeeded."""
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
