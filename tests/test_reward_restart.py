"""`firm serve` as real processes: a server killed with SIGKILL and restarted in the middle of an RL
run on the tiny critic (the run waits for it and finishes with every reward), and the server's peak
memory under a pixel bomb and under a request at its pixel limits.

Slow for a unit test (two server starts, three DiffusionNFT steps: about a minute): the restart
can only be shown with a real process that really dies."""

from __future__ import annotations

import base64
import io
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest
import torch
from PIL import Image
from serve_process import free_port, start_serve, wait_healthy

from firm_assets.critics.rewards import RewardConfig
from firm_assets.critics.scoring import CriticScorer
from firm_assets.curation.versioning import short_hash
from firm_assets.rl.assets import GEN_POLICY
from firm_assets.rl.critic_reward import critic_reward_fn
from firm_assets.rl.launch import policy_training, server_critic_version
from firm_assets.rl.nft.config import NFTConfig
from firm_assets.rl.nft.loop import train_policy
from firm_assets.rl.nft.records import PromptItem, RewardBatch, Rollout, StepLog
from firm_assets.rl.settings import RLPolicyConfig
from firm_assets.rl.train import build_reward_fn
from firm_assets.serving.client import RewardServerError
from firm_assets.serving.remote import RemoteScorer
from resources.home import warehouse_path
from resources.models import ModelsResource
from resources.tiny_diffusion import build_tiny_diffusion
from resources.tiny_models import VL_NAME
from warehouse.connection import Warehouse

MiB = 2**20


def start_critic(critic: Path, port: int, home: Path) -> subprocess.Popen:
    return start_serve(critic, port, ["--max-new-tokens", "32"], env={"FIRM_HOME": str(home)})


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        server.wait(60)


@pytest.fixture
def served(tiny_models: dict[str, Path], tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A `firm serve` process on the tiny critic; the list holds it and any restarted successor."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    servers = [start_critic(tiny_models[VL_NAME], port, tmp_path)]
    try:
        wait_healthy(url, servers[0], timeout_s=180)
        yield url, servers
    finally:
        for server in servers:
            stop(server)


def test_an_rl_run_waits_for_a_restarted_server(
    served: tuple[str, list[subprocess.Popen]], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Three DiffusionNFT steps rewarded through the server; after step 1 the server is killed with
    SIGKILL and a new one started on the same port. Step 2's reward call meets a refused connection,
    then 503 while the critic loads (Retry-After from the first server's measured load), and gets
    its scores: the run finishes, every reward the one the critic gives in this process."""
    url, servers = served
    remote = RemoteScorer(url, backoff_s=0.2, max_backoff_s=1.0)
    served_rewards = critic_reward_fn("gen", remote, RewardConfig.qma(), "expectation", {})
    local = CriticScorer.load(str(tiny_models[VL_NAME]), max_new_tokens=32)
    local_rewards = critic_reward_fn("gen", local, RewardConfig.qma(), "expectation", {})
    steps: list[tuple[list[float | None], list[float | None]]] = []

    def reward_fn(rollouts: list[Rollout]) -> RewardBatch:
        """The served rewards, kept beside the critic's own on the same rollouts in this process."""
        batch = served_rewards(rollouts)
        steps.append((batch.rewards, local_rewards(rollouts).rewards))
        return batch

    pipelines = build_tiny_diffusion(tmp_path / "diffusion")
    config = NFTConfig(
        task="gen",
        pipeline_path=str(pipelines["tiny-sd3"]),
        steps=3,
        prompts_per_step=2,
        group_size=2,
        sampling_steps=2,
        size=32,
        lora_rank=4,
        lora_alpha=8,
        learning_rate=1e-2,
        nft_beta=1.0,
        ema_decay=0.9,
        base_penalty=1e-4,
    )
    prompts = [PromptItem(short_hash(text), text) for text in ("a red cat", "a blue dog")]
    logs: list[StepLog] = []

    def on_step(log: StepLog) -> None:
        logs.append(log)
        if log.step == 1:
            servers[0].send_signal(signal.SIGKILL)
            servers[0].wait(30)
            port = int(url.rsplit(":", 1)[1])
            servers.append(start_critic(tiny_models[VL_NAME], port, tmp_path))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny pipeline is overhead-bound: more threads only contend
    try:
        result = train_policy(config, prompts, reward_fn, tmp_path / "checkpoints", on_step=on_step)
    finally:
        torch.set_num_threads(threads)

    assert result.final_step == 3 and [log.step for log in logs] == [1, 2, 3]
    assert servers[0].returncode == -signal.SIGKILL and servers[1].poll() is None
    # every rollout of every step has the reward the critic gives it (None only where the critic's own
    # answer fails to parse, in this process too)
    assert len(steps) == 3
    for served_step, local_step in steps:
        assert len(served_step) == 4
        assert served_step == [None if v is None else pytest.approx(v) for v in local_step]
    assert remote.client.retries >= 1  # step 2 really waited for the new server
    assert (tmp_path / "serving" / "load_seconds.json").exists()  # what the restart's Retry-After read


def solid_png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_server_memory_is_bounded_by_what_a_request_may_cost(
    served: tuple[str, list[subprocess.Popen]],
) -> None:
    """Eight solid 4096x4096 PNGs (1 MB of body, 134 M declared pixels) are refused from their
    headers: 413, and the server's peak RSS does not move by more than 64 MiB. Three of them (50 M
    pixels, within the 64 Mi-pixel request limit) are decoded one at a time and shrunk to the
    critic's pixel budget: scored, with the peak within 256 MiB of where it was (one decoded 4096^2
    image is 48 MiB of RGB)."""
    url, (server,) = served
    image = base64.b64encode(solid_png(4096)).decode()
    before = peak_rss_mib(server.pid)
    bomb = {"items": [{"image": image, "prompt": "a red square"}] * 8}
    response = httpx.post(f"{url}/v1/gen", json=bomb, timeout=300)
    assert response.status_code == 413 and "the limit is 67108864" in response.json()["detail"]
    after_bomb = peak_rss_mib(server.pid)
    assert after_bomb - before < 64, (before, after_bomb)
    within = {"items": [{"image": image, "prompt": "a red square"}] * 3}
    response = httpx.post(f"{url}/v1/gen", json=within, timeout=300)
    assert response.status_code == 200, response.text
    assert all(r["instruction"]["score"] is not None for r in response.json()["results"])
    after = peak_rss_mib(server.pid)
    assert after - before < 256, (before, after)
    print(f"PEAK_RSS before={before:.0f}MiB after_bomb={after_bomb:.0f}MiB after_3x4096^2={after:.0f}MiB")


def test_a_policy_against_a_server_names_the_served_critic(served, firm_home: Path) -> None:
    """The served critic, not the upstream asset's, is the one a policy trains against: its version
    enters the policy version, the trainer's model tags and the skip line alike."""
    url, _ = served
    upstream = pl.DataFrame(
        [{"version": "upstream0000", "path": "", "registered_model": "firm_gen_critic", "model_version": "1"}]
    )
    prompts = pl.DataFrame({"prompt_id": ["p1"], "prompt": ["a red square"], "source": ["demo"]})
    config = RLPolicyConfig(reward_server=url)
    job = policy_training(
        GEN_POLICY, prompts, upstream, config, ModelsResource(), Warehouse(warehouse_path())
    )
    served_version = server_critic_version(config)
    assert served_version != "upstream0000"
    assert job.params("run", "uri")["model_tags"]["critic_version"] == served_version
    assert job.trained_on.endswith(served_version)
    local = policy_training(
        GEN_POLICY, prompts, upstream, RLPolicyConfig(), ModelsResource(), Warehouse(warehouse_path())
    )
    assert local.critic["version"] == "upstream0000" and local.version != job.version


def test_a_run_waits_for_a_gone_server_only_up_to_its_deadline(served, firm_home: Path) -> None:
    """Run config `reward_server_deadline_s` reaches the trainer's reward function: with the server
    killed, a step's reward call gives up after the run's 2 s (the default would wait 15 minutes),
    and the setting leaves the policy version as it was."""
    url, servers = served
    upstream = pl.DataFrame(
        [{"version": "upstream0000", "path": "", "registered_model": "firm_gen_critic", "model_version": "1"}]
    )
    prompts = pl.DataFrame({"prompt_id": ["p1"], "prompt": ["a red square"], "source": ["demo"]})
    warehouse = Warehouse(warehouse_path())
    config = RLPolicyConfig(reward_server=url, reward_server_deadline_s=2.0)
    job = policy_training(GEN_POLICY, prompts, upstream, config, ModelsResource(), warehouse)
    unset = policy_training(
        GEN_POLICY, prompts, upstream, RLPolicyConfig(reward_server=url), ModelsResource(), warehouse
    )
    assert job.version == unset.version
    reward_fn, critic_version = build_reward_fn(job.params("run", "uri"), {})
    assert critic_version == server_critic_version(config)
    servers[0].send_signal(signal.SIGKILL)
    servers[0].wait(30)
    rollout = Rollout("p1", "a red square", None, Image.new("RGB", (32, 32), (200, 30, 30)), 0)
    with pytest.raises(RewardServerError, match="gave up after 2 s"):
        reward_fn([rollout])
