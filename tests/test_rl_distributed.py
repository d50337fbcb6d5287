"""Data-parallel RL on torch.distributed, proven on the CPU with gloo and two real processes launched
the way the product launches them (`torchrun ... -m firm_assets.rl.train --params FILE`):

- the same global groups and seeds give the 1-process run's per-step losses (relative 1e-5) and its
  final LoRA (absolute 5e-5: 5 % of one AdamW step at lr 1e-3; summation order differs and AdamW's
  g / (sqrt(v) + eps) enlarges that for gradient entries near eps), with the groups split 2 + 1;
- the cost counts the rollouts of both ranks;
- kill -9 of rank 1 fails the run with a message, and launching again resumes from the checkpoint.

Slow for a unit test (each launch starts two Python processes that import torch and diffusers):
the one place the multi-process path runs for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from rl_trainer_params import trainer_params
from safetensors.torch import load_file

from resources.tiny_diffusion import build_tiny_diffusion

REPO = Path(__file__).resolve().parent.parent
REWARD = "firm_assets.rl.rule_rewards:greenness"
PROMPTS = ["a red cat", "a blue dog", "a photo of the sea"]
pytestmark = pytest.mark.timeout(900)


def _command(params: Path, ranks: int) -> list[str]:
    module = ["-m", "firm_assets.rl.train", "--params", str(params)]
    if ranks == 1:
        return [sys.executable, *module]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(ranks),
        *module,
    ]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "FIRM_HOME": str(home), "OMP_NUM_THREADS": "1"}


def _write(home: Path, pipeline: Path, **nft: object) -> Path:
    params = trainer_params(home, pipeline, PROMPTS, REWARD, **nft)
    path = home / "params.json"
    path.write_text(json.dumps(params))
    return path


def _summary(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith('{"final_step"')][-1])


def _losses(home: Path) -> list[float]:
    history = (home / "checkpoints" / "steps.jsonl").read_text().splitlines()
    return [json.loads(line)["metrics"]["loss"] for line in history]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_diffusion(tmp_path_factory.mktemp("ddp-diffusion"))["tiny-sd3"]


def test_two_ranks_train_what_one_process_trains(pipeline: Path, tmp_path: Path) -> None:
    settings = {"steps": 3, "prompts_per_step": 3, "group_size": 2, "learning_rate": 1e-3}
    runs = {}
    for ranks in (1, 2):
        home = tmp_path / f"ranks-{ranks}"
        params = _write(home, pipeline, **settings)
        done = subprocess.run(
            _command(params, ranks), env=_env(home), capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[ranks] = home, _summary(done.stdout)

    (one, one_summary), (two, two_summary) = runs[1], runs[2]
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)
    lora_one = load_file(one / "checkpoints" / "final" / "lora" / "adapter_model.safetensors")
    lora_two = load_file(two / "checkpoints" / "final" / "lora" / "adapter_model.safetensors")
    assert lora_one.keys() == lora_two.keys()
    for key, tensor in lora_one.items():
        torch.testing.assert_close(lora_two[key], tensor, rtol=0, atol=5e-5)
    assert any(t.abs().max() > 1e-4 for k, t in lora_two.items() if "lora_B" in k)  # it did train
    # every rank's rollouts are counted: 3 steps x 3 groups x 2 images, whichever rank made them
    assert two_summary["ranks"] == 2 and one_summary["ranks"] == 1
    assert two_summary["cost"]["images_generated"] == one_summary["cost"]["images_generated"] == 18


def _rank_process(launcher: psutil.Process, rank: int) -> psutil.Process | None:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "firm_assets.rl.train" in child.cmdline():
                return child
        except psutil.Error:
            continue
    return None


def test_a_killed_rank_fails_the_run_and_a_relaunch_resumes(pipeline: Path, tmp_path: Path) -> None:
    home = tmp_path / "killed"
    params = _write(home, pipeline, steps=8, prompts_per_step=2, group_size=2, learning_rate=1e-3)
    launcher = subprocess.Popen(
        _command(params, 2),
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (home / "checkpoints" / "step-00000002").exists():
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        victim = _rank_process(psutil.Process(launcher.pid), 1)
        assert victim is not None
        victim.kill()  # SIGKILL
        output, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, 9)
    print(output[-1500:])
    assert launcher.returncode != 0
    assert "firm_assets.rl.train FAILED" in output and "Signal 9 (SIGKILL)" in output

    again = subprocess.run(_command(params, 2), env=_env(home), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = _summary(again.stdout)
    assert summary["final_step"] == 8 and 2 <= summary["resumed_from_step"] < 8
    steps = [
        json.loads(line)["step"] for line in (home / "checkpoints" / "steps.jsonl").read_text().splitlines()
    ]
    assert set(steps) == set(range(1, 9))
