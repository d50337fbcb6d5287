"""The DiffusionNFT loop: prompts -> rollouts -> rewards -> advantages -> one update -> checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel

from firm_assets import checkpoints
from firm_assets.rl.monitors import image_statistics
from firm_assets.rl.nft.adapters import adapter_params, add_adapters, blend_adapter, ema_of, update_ema
from firm_assets.rl.nft.config import NFTConfig, rollout_decay
from firm_assets.rl.nft.loss import (
    group_advantages,
    nft_loss,
    noisy_latents,
    optimality_probability,
    sample_dims,
)
from firm_assets.rl.nft.pipelines import Family, load_family
from firm_assets.rl.nft.records import PromptItem, RewardBatch, RewardFn, Rollout, StepLog, TrainResult
from firm_assets.rl.nft.resume import (
    check_resumable,
    complete_checkpoints,
    export,
    load_checkpoint,
    save_checkpoint,
)
from firm_assets.rl.nft.sampling import Group, rollout_group

ADAM_WEIGHT_DECAY = 1e-4


def prompts_for_step(n_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the prompts for a 0-based step: consecutive slices of seeded per-epoch
    permutations, so every prompt is used once per epoch and a resume picks the same ones. A
    slice never spans two epochs (that could repeat a prompt within one step)."""
    if not 1 <= per_step <= n_prompts:
        raise ValueError(f"prompts_per_step must be between 1 and the {n_prompts} prompts, got {per_step}")
    slices_per_epoch = n_prompts // per_step
    epoch, position = divmod(step, slices_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_prompts)
    return [int(i) for i in order[position * per_step : (position + 1) * per_step]]


def rollout_seed(seed: int, step: int, prompt_index: int, sample: int) -> int:
    """A distinct, reproducible seed per image."""
    return int(np.random.SeedSequence([seed, step, 0, prompt_index, sample]).generate_state(1)[0])


def training_seed(seed: int, step: int) -> int:
    """The seed of a step's training noise, from a stream apart from the rollouts' seeds."""
    return int(np.random.SeedSequence([seed, step, 1]).generate_state(1)[0])


def train_step(
    family: Family,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    groups: list[Group],
    advantages: list[float | None],
    sigmas: torch.Tensor,
    config: NFTConfig,
    generator: torch.Generator,
) -> tuple[float, float]:
    """One optimizer step over every unmasked sample at every sampling sigma; returns (loss,
    pre-clip gradient norm). Gradients accumulate one (group, sigma) micro-batch at a time."""
    train_sigmas = sigmas[:-1]
    used = sum(a is not None for a in advantages)
    denominator = used * len(train_sigmas)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    offset = 0
    for group in groups:
        own = advantages[offset : offset + len(group.seeds)]
        offset += len(group.seeds)
        keep = [i for i, a in enumerate(own) if a is not None]
        if not keep:
            continue
        x0 = group.latents[keep]
        advantage = torch.tensor([own[i] for i in keep], dtype=torch.float32, device=x0.device)
        optimality = optimality_probability(advantage, config.advantage_clip)
        for sigma in train_sigmas:
            t = sigma.expand(len(keep))
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
            x_t = noisy_latents(x0, noise, t.to(x0.device, x0.dtype))
            with torch.no_grad():
                model.set_adapter("old")
                v_old = family.velocity(x_t, t, group.condition).float()
                with model.disable_adapter():
                    v_base = family.velocity(x_t, t, group.condition).float()
            model.set_adapter("default")
            v_theta = family.velocity(x_t, t, group.condition).float()
            policy = nft_loss(
                v_theta,
                v_old,
                x_t.float(),
                x0.float(),
                t.to(x0.device),
                optimality,
                config.nft_beta,
                config.advantage_clip,
            )
            penalty = (v_theta - v_base).square().mean(dim=sample_dims(v_theta))
            loss = (policy + config.base_penalty * penalty).sum() / denominator
            loss.backward()
            total += loss.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    return total, float(grad_norm)


def _check_prompts(config: NFTConfig, prompts: Sequence[PromptItem]) -> None:
    if not prompts:
        raise ValueError("train_policy needs at least one prompt")
    ids = [p.prompt_id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt_id values must be unique: each prompt is one advantage group")
    if config.prompts_per_step > len(prompts):
        raise ValueError(f"prompts_per_step={config.prompts_per_step} exceeds the {len(prompts)} prompts")
    wrong = [p.prompt_id for p in prompts if (p.source is None) == (config.task == "edit")]
    if wrong:
        need = "a source image" if config.task == "edit" else "no source image"
        raise ValueError(f"task {config.task!r} needs {need} on every prompt; not so for {wrong[:3]}")


def _step_log(
    step: int, loss: float, grad_norm: float, rollouts: list[Rollout], rewards: RewardBatch
) -> StepLog:
    present = [r for r in rewards.rewards if r is not None]
    statistics = image_statistics([r.image for r in rollouts])
    clash = statistics.keys() & rewards.monitors.keys()
    if clash:
        raise ValueError(f"reward monitors reuse image-statistic names: {sorted(clash)}")
    return StepLog(
        step=step,
        loss=loss,
        reward_mean=float(np.mean(present)) if present else None,
        reward_std=float(np.std(present)) if present else None,
        masked_fraction=1 - len(present) / len(rewards.rewards),
        grad_norm=grad_norm,
        monitors={**statistics, **rewards.monitors},
        samples=rollouts,
    )


def _checked_rewards(batch: RewardBatch, rollouts: list[Rollout]) -> RewardBatch:
    if len(batch.rewards) != len(rollouts):
        raise ValueError(f"reward_fn returned {len(batch.rewards)} rewards for {len(rollouts)} rollouts")
    bad = [r for r in batch.rewards if r is not None and not np.isfinite(r)]
    if bad:
        raise ValueError(f"reward_fn returned non-finite rewards {bad[:3]}; mask failures with None instead")
    return batch


def train_policy(
    config: NFTConfig,
    prompts: Sequence[PromptItem],
    reward_fn: RewardFn,
    checkpoint_dir: Path,
    on_step: Callable[[StepLog], None] | None = None,
) -> TrainResult:
    """Train a LoRA with DiffusionNFT for config.steps optimizer steps.

    Resumes from the newest complete checkpoint in checkpoint_dir when there is one (same
    config apart from steps/checkpoint_every, same prompts), continuing the identical trajectory.
    A step whose rewards are all masked makes no update (the rollout and EMA adapters stay too:
    their schedules count updates, as the reference's `global_step` does) and logs a NaN loss.
    """
    _check_prompts(config, prompts)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.clear_partial(checkpoint_dir)
    prompt_ids = [p.prompt_id for p in prompts]
    found = complete_checkpoints(checkpoint_dir)
    resume = None
    if found:  # checked before the (slow) pipeline load, so a mismatch fails fast
        _, path = found[-1]
        resume = path, json.loads((path / "state.json").read_text())
        check_resumable(resume[1], config, prompt_ids, path)

    family = load_family(config)
    model = add_adapters(family, config)
    model.train()
    params = [p for _, p in sorted(adapter_params(model, "default").items())]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=ADAM_WEIGHT_DECAY)
    sigmas = family.sigmas(config.sampling_steps)

    losses: list[float] = []
    start = updates = 0
    if resume is not None:
        path, state = resume
        load_checkpoint(path, state, model, optimizer, family.device)
        start, losses, updates = state["step"], list(state["losses"]), state["updates"]
    ema = ema_of(model, config, updates)

    for step in range(start, config.steps):
        chosen = prompts_for_step(len(prompts), config.prompts_per_step, step, config.seed)
        groups = [
            rollout_group(
                family,
                model,
                prompts[index],
                [rollout_seed(config.seed, step, index, j) for j in range(config.group_size)],
                sigmas,
                config.solver,
            )
            for index in chosen
        ]
        rollouts = [r for g in groups for r in g.rollouts]
        rewards = _checked_rewards(reward_fn(rollouts), rollouts)
        labels = [r.prompt_id for r in rollouts]
        advantages = group_advantages(rewards.rewards, labels, config.advantage_clip)
        if all(a is None for a in advantages):
            loss, grad_norm = float("nan"), 0.0
        else:
            generator = torch.Generator("cpu").manual_seed(training_seed(config.seed, step))
            loss, grad_norm = train_step(
                family, model, optimizer, params, groups, advantages, sigmas, config, generator
            )
            updates += 1
            blend_adapter(model, target="old", source="default", decay=rollout_decay(config, updates))
            update_ema(ema, model)
        losses.append(loss)
        if on_step is not None:
            on_step(_step_log(step + 1, loss, grad_norm, rollouts, rewards))
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            save_checkpoint(checkpoint_dir, step + 1, model, optimizer, config, prompt_ids, losses, updates)

    _, last = complete_checkpoints(checkpoint_dir)[-1]
    lora_dir, ema_dir = export(checkpoint_dir, last)
    return TrainResult(lora_dir=lora_dir, ema_lora_dir=ema_dir, final_step=config.steps, losses=losses)
