"""DiffusionNFT: the pure math on hand-computed cases, then real runs on the tiny SD3 and
FluxKontext pipelines with a real (pixel-statistic) reward."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import SD3Transformer2DModel
from peft import PeftModel
from PIL import Image
from safetensors.torch import load_file

from firm_assets.curation.versioning import short_hash
from firm_assets.rl.monitors import image_statistics
from firm_assets.rl.nft.config import NFTConfig
from firm_assets.rl.nft.loop import prompts_for_step, rollout_seed, train_policy, training_seed
from firm_assets.rl.nft.loss import group_advantages, nft_loss, noisy_latents, optimality_probability
from firm_assets.rl.nft.records import PromptItem, RewardBatch, Rollout, StepLog
from resources.tiny_diffusion import build_tiny_diffusion

# --- pure math ---------------------------------------------------------------------------------


def test_advantages_centre_on_the_group_and_scale_by_the_batch_std() -> None:
    # Group means a = 2, b = 2; batch std of [1, 3, 2, 2] = sqrt(0.5).
    advantages = group_advantages([1.0, 3.0, 2.0, 2.0], ["a", "a", "b", "b"], clip=5.0)
    assert advantages == pytest.approx([-math.sqrt(2), math.sqrt(2), 0.0, 0.0])


def test_advantages_are_clipped() -> None:
    # std of [0, 0, 0, 10] = sqrt(18.75) = 4.33; group b: (10 - 5) / 4.33 = 1.155 -> clipped to 1.
    advantages = group_advantages([0.0, 0.0, 0.0, 10.0], ["a", "a", "b", "b"], clip=1.0)
    assert advantages == pytest.approx([0.0, 0.0, -1.0, 1.0])


def test_masked_rewards_take_no_part_and_are_never_zero() -> None:
    # Group a keeps only 1.0 (its own mean: advantage 0; as 0 it would have been +); group b has
    # mean 4; std over the present [1, 3, 5] = sqrt(8/3).
    advantages = group_advantages([1.0, None, 3.0, 5.0], ["a", "a", "b", "b"], clip=5.0)
    scale = math.sqrt(8 / 3)
    assert advantages[1] is None
    assert advantages[0] == 0.0
    assert advantages[2:] == pytest.approx([-1 / scale, 1 / scale])


def test_a_fully_masked_group_contributes_nothing() -> None:
    assert group_advantages([None, None, 1.0, 3.0], ["a", "a", "b", "b"], clip=5.0) == [None, None, -1.0, 1.0]
    assert group_advantages([None, None], ["a", "a"], clip=5.0) == [None, None]


def test_equal_rewards_give_zero_advantages() -> None:
    assert group_advantages([0.7, 0.7, 0.7], ["a", "a", "b"], clip=5.0) == [0.0, 0.0, 0.0]


def test_advantages_need_one_group_label_per_reward() -> None:
    with pytest.raises(ValueError, match="2 rewards for 3 group labels"):
        group_advantages([1.0, 2.0], ["a", "a", "b"], clip=5.0)


def test_optimality_probability_maps_clipped_advantage_to_unit_interval() -> None:
    r = optimality_probability(torch.tensor([-5.0, 0.0, 2.5, 5.0, 7.0]), clip=5.0)
    assert r.tolist() == pytest.approx([0.0, 0.5, 0.75, 1.0, 1.0])


def test_noisy_latents_interpolate_between_data_and_noise() -> None:
    x0 = torch.full((2, 1, 1), 2.0)
    noise = torch.full((2, 1, 1), -2.0)
    x_t = noisy_latents(x0, noise, torch.tensor([0.25, 1.0]))
    assert x_t.flatten().tolist() == pytest.approx([0.75 * 2 - 0.25 * 2, -2.0])


def _one_element_case(optimality: float, beta: float, clip: float) -> tuple[float, float]:
    """x0 = 0, noise = 1, t = 0.5 (x_t = 0.5, target velocity 1), v_theta = v_old = 0."""
    v_theta = torch.zeros(1, 1, requires_grad=True)
    loss = nft_loss(
        v_theta,
        torch.zeros(1, 1),
        torch.full((1, 1), 0.5),
        torch.zeros(1, 1),
        torch.tensor([0.5]),
        torch.tensor([optimality]),
        beta=beta,
        advantage_clip=clip,
    )
    loss.sum().backward()
    return float(loss.detach()), float(v_theta.grad)


def test_nft_loss_value_and_gradient_by_hand() -> None:
    # Both implicit policies predict x0 = 0.5 (error 0.5, adaptive weight 0.5): each term is
    # 0.25 / 0.5 = 0.5, so loss = clip * 0.5 / beta = 2. d/dv_theta: positive term -beta,
    # negative term +beta, so grad = clip * (r (-beta) + (1 - r) beta) / beta = clip (1 - 2r).
    loss, grad = _one_element_case(optimality=0.75, beta=0.5, clip=2.0)
    assert loss == pytest.approx(2.0)
    assert grad == pytest.approx(-1.0)  # descent raises v_theta towards the target velocity 1


def test_nft_loss_pushes_away_from_bad_samples_and_ignores_neutral_ones() -> None:
    assert _one_element_case(optimality=0.0, beta=1.0, clip=1.0)[1] == pytest.approx(1.0)
    assert _one_element_case(optimality=0.5, beta=1.0, clip=1.0)[1] == pytest.approx(0.0)


def test_nft_loss_is_zero_on_the_true_velocity() -> None:
    x0 = torch.tensor([[0.2, -0.4]])
    noise = torch.tensor([[1.0, 0.5]])
    t = torch.tensor([0.3])
    velocity = noise - x0
    loss = nft_loss(
        velocity,
        velocity,
        noisy_latents(x0, noise, t),
        x0,
        t,
        torch.tensor([1.0]),
        beta=1.0,
        advantage_clip=5.0,
    )
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_prompts_for_step_cover_each_epoch_once_and_repeat_exactly() -> None:
    first_epoch = prompts_for_step(5, 2, 0, seed=3) + prompts_for_step(5, 2, 1, seed=3)
    assert len(set(first_epoch)) == 4  # 5 // 2 slices per epoch, never a prompt twice
    assert prompts_for_step(5, 2, 1, seed=3) == prompts_for_step(5, 2, 1, seed=3)
    assert all(0 <= i < 5 for i in prompts_for_step(5, 2, 7, seed=3))
    with pytest.raises(ValueError, match="between 1 and the 2 prompts"):
        prompts_for_step(2, 3, 0, seed=0)


def test_seeds_are_distinct_per_image_and_apart_from_training_noise() -> None:
    seeds = {rollout_seed(0, step, p, j) for step in range(3) for p in range(3) for j in range(4)}
    assert len(seeds) == 36
    assert training_seed(0, 0, 0) not in seeds
    assert training_seed(0, 1, 2) == training_seed(0, 1, 2) != training_seed(0, 1, 3)
    assert rollout_seed(0, 1, 2, 3) == rollout_seed(0, 1, 2, 3) != rollout_seed(1, 1, 2, 3)


# --- real runs on the tiny pipelines -----------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny models are overhead-bound: more threads only contend for the shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_diffusion(tmp_path_factory.mktemp("nft-diffusion"))


def config(pipelines: dict[str, Path], task: str = "gen", **changes: object) -> NFTConfig:
    values: dict = {
        "task": task,
        "pipeline_path": str(pipelines["tiny-sd3" if task == "gen" else "tiny-flux-kontext"]),
        "steps": 1,
        "prompts_per_step": 2,
        "group_size": 2,
        "sampling_steps": 2,
        "size": 32,
        "lora_rank": 4,
        "lora_alpha": 8,
        "learning_rate": 1e-2,
        "nft_beta": 1.0,
        "base_penalty": 1e-4,
    }
    return NFTConfig(**(values | changes))


def gen_prompts() -> list[PromptItem]:
    return [PromptItem(short_hash(text), text) for text in ("a red cat", "a blue dog", "a photo of the sea")]


def edit_prompts() -> list[PromptItem]:
    colours = ("red", "blue")
    sources = [Image.new("RGB", (40, 30), colour) for colour in colours]
    return [
        PromptItem(short_hash("make it green", c), "make it green", s)
        for c, s in zip(colours, sources, strict=True)
    ]


def brightness(rollouts: list[Rollout]) -> RewardBatch:
    """A real reward: the image's mean luma (a policy can learn to raise it)."""
    return RewardBatch([image_statistics([r.image])["brightness"] for r in rollouts], {"held_out_gap": 0.0})


def lora_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def test_gen_step_trains_the_lora_and_moves_old_and_ema_adapters(
    pipelines: dict[str, Path], tmp_path: Path
) -> None:
    logs: list[StepLog] = []
    cfg = config(pipelines)
    result = train_policy(cfg, gen_prompts(), brightness, tmp_path, on_step=logs.append)

    assert result.final_step == 1 and len(result.losses) == 1 and math.isfinite(result.losses[0])
    (log,) = logs
    assert log.step == 1 and log.loss == result.losses[0] and log.grad_norm > 0
    assert log.masked_fraction == 0.0
    assert len(log.samples) == 4 and {s.image.size for s in log.samples} == {(32, 32)}
    assert len({s.seed for s in log.samples}) == 4
    assert log.reward_mean == pytest.approx(
        np.mean([image_statistics([s.image])["brightness"] for s in log.samples])
    )
    assert set(log.monitors) == {
        "brightness",
        "saturation",
        "colour_entropy",
        "near_black_fraction",
        "held_out_gap",
    }

    trained = lora_tensors(result.lora_dir)
    ema = lora_tensors(result.ema_lora_dir)
    old = lora_tensors(tmp_path / "step-00000001" / "old")
    assert json.loads((result.lora_dir / "adapter_config.json").read_text())["r"] == 4
    b_keys = [k for k in trained if "lora_B" in k]
    assert b_keys and any("attn.to_q" in k for k in b_keys)
    # The image-stream projections all learn (the last SD3 block's text query feeds nothing).
    assert all(trained[k].abs().max() > 0 for k in b_keys if ".to_" in k)
    # B starts at 0: after update 1 the rollout adapter is (1 - 0.001) of the trained one (decay
    # min(0.001 * 1, 0.5)) and the EMA (1 - 2 / 11) of it (decay min((1 + 1) / (10 + 1), 0.9))
    for key in b_keys:
        torch.testing.assert_close(ema[key], (1 - 2 / 11) * trained[key])
        torch.testing.assert_close(old[key], (1 - 0.001) * trained[key])

    # The exported folder is a plain peft adapter: it loads onto a fresh base transformer.
    base = SD3Transformer2DModel.from_pretrained(pipelines["tiny-sd3"] / "transformer")
    loaded = dict(PeftModel.from_pretrained(base, result.lora_dir).named_parameters())
    key = b_keys[0].replace(".weight", ".default.weight")
    torch.testing.assert_close(loaded[key], trained[b_keys[0]])


def test_resume_continues_the_same_trajectory(pipelines: dict[str, Path], tmp_path: Path) -> None:
    straight = train_policy(config(pipelines, steps=3), gen_prompts(), brightness, tmp_path / "straight")

    interrupted = tmp_path / "interrupted"
    first = train_policy(config(pipelines, steps=2), gen_prompts(), brightness, interrupted)
    assert first.losses == pytest.approx(straight.losses[:2], abs=1e-6)
    steps_seen: list[int] = []
    resumed = train_policy(
        config(pipelines, steps=3),
        gen_prompts(),
        brightness,
        interrupted,
        on_step=lambda log: steps_seen.append(log.step),
    )
    assert steps_seen == [3]  # only the missing step ran
    assert resumed.final_step == 3
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    for key, tensor in lora_tensors(straight.lora_dir).items():
        torch.testing.assert_close(lora_tensors(resumed.lora_dir)[key], tensor, rtol=0, atol=1e-6)
    assert sorted(p.name for p in interrupted.iterdir()) == ["final", "step-00000002", "step-00000003"]

    with pytest.raises(ValueError, match="different config \\(learning_rate\\)"):
        train_policy(config(pipelines, steps=4, learning_rate=0.5), gen_prompts(), brightness, interrupted)
    with pytest.raises(ValueError, match="different prompt list"):
        train_policy(config(pipelines, steps=4), gen_prompts()[:2], brightness, interrupted)


def test_masked_rewards_are_left_out_and_an_all_masked_step_changes_nothing(
    pipelines: dict[str, Path], tmp_path: Path
) -> None:
    def first_group_fails(rollouts: list[Rollout]) -> RewardBatch:
        scored = brightness(rollouts).rewards
        failed = rollouts[0].prompt_id
        return RewardBatch(
            [None if r.prompt_id == failed else s for r, s in zip(rollouts, scored, strict=True)], {}
        )

    logs: list[StepLog] = []
    partial = train_policy(
        config(pipelines), gen_prompts(), first_group_fails, tmp_path / "partial", logs.append
    )
    (log,) = logs
    assert log.masked_fraction == 0.5
    assert log.reward_mean == pytest.approx(
        np.mean([image_statistics([s.image])["brightness"] for s in log.samples[2:]])
    )
    assert math.isfinite(partial.losses[0])
    assert any(t.abs().max() > 0 for k, t in lora_tensors(partial.lora_dir).items() if "lora_B" in k)

    logs.clear()
    nothing = train_policy(
        config(pipelines),
        gen_prompts(),
        lambda rs: RewardBatch([None] * len(rs), {}),
        tmp_path / "none",
        logs.append,
    )
    assert math.isnan(nothing.losses[0]) and logs[0].masked_fraction == 1.0 and logs[0].reward_mean is None
    assert all(t.abs().max() == 0 for k, t in lora_tensors(nothing.lora_dir).items() if "lora_B" in k)


def test_edit_step_on_flux_kontext(pipelines: dict[str, Path], tmp_path: Path) -> None:
    logs: list[StepLog] = []
    result = train_policy(config(pipelines, task="edit"), edit_prompts(), brightness, tmp_path, logs.append)
    assert math.isfinite(result.losses[0]) and logs[0].grad_norm > 0
    sample = logs[0].samples[0]
    assert sample.source is not None and sample.source.size == sample.image.size == (32, 32)
    assert {s.prompt_id for s in logs[0].samples} == {p.prompt_id for p in edit_prompts()}
    assert any(t.abs().max() > 0 for k, t in lora_tensors(result.lora_dir).items() if "lora_B" in k)


def test_bad_inputs_are_clear_errors(pipelines: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a source image on every prompt"):
        train_policy(config(pipelines, task="edit"), gen_prompts(), brightness, tmp_path / "a")
    with pytest.raises(ValueError, match="needs a FluxKontextPipeline"):
        train_policy(
            config(pipelines, task="edit", pipeline_path=str(pipelines["tiny-sd3"])),
            edit_prompts(),
            brightness,
            tmp_path / "b",
        )
    with pytest.raises(ValueError, match="prompt_id values must be unique"):
        train_policy(config(pipelines), gen_prompts()[:1] * 2, brightness, tmp_path / "c")
    with pytest.raises(ValueError, match="returned 1 rewards for 4 rollouts"):
        train_policy(config(pipelines), gen_prompts(), lambda rs: RewardBatch([0.5], {}), tmp_path / "d")
    with pytest.raises(ValueError, match="non-finite"):
        train_policy(
            config(pipelines), gen_prompts(), lambda rs: RewardBatch([math.nan] * len(rs), {}), tmp_path / "e"
        )
    with pytest.raises(ValueError, match="multiple of 16"):
        train_policy(config(pipelines, size=40), gen_prompts(), brightness, tmp_path / "f")


def test_micro_batches_and_gradient_checkpointing_change_the_cost_not_the_result(
    pipelines: dict[str, Path], tmp_path: Path
) -> None:
    plain_config = config(pipelines, group_size=3, steps=2, learning_rate=1e-3)
    plain = train_policy(plain_config, gen_prompts(), brightness, tmp_path / "a")
    lean_config = plain_config.model_copy(update={"micro_batch": 2, "gradient_checkpointing": True})
    lean = train_policy(lean_config, gen_prompts(), brightness, tmp_path / "b")
    assert lean.losses == pytest.approx(plain.losses, rel=1e-5)
    # the same sums in another order: float32 rounding, which AdamW's g / (sqrt(v) + eps) enlarges
    # for gradient entries near eps (their first updates are about lr * sign(g)); the tolerance is
    # 5 % of one step's size (lr 1e-3), where a real difference would move entries by whole steps
    for key, tensor in lora_tensors(plain.lora_dir).items():
        torch.testing.assert_close(lora_tensors(lean.lora_dir)[key], tensor, rtol=0, atol=5e-5)
