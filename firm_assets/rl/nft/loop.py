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
from firm_assets.rl.nft.parallel import Ranks, current_ranks
from firm_assets.rl.nft.pipelines import Family, load_family
from firm_assets.rl.nft.records import PromptItem, RewardBatch, RewardFn, Rollout, StepLog, TrainResult
from firm_assets.rl.nft.resume import (
    STATE_FILE,
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


def training_seed(seed: int, step: int, prompt_index: int) -> int:
    """The seed of a prompt group's training noise in a step, from a stream apart from the rollouts'
    seeds; per group, so a group's noise is the same whichever rank trains it."""
    return int(np.random.SeedSequence([seed, step, 1, prompt_index]).generate_state(1)[0])


def micro_batches(indices: list[int], size: int | None) -> list[list[int]]:
    """`indices` in consecutive chunks of at most `size` (all at once when size is None)."""
    size = size or max(len(indices), 1)
    return [indices[start : start + size] for start in range(0, len(indices), size)]


def train_step(
    family: Family,
    model: PeftModel,
    groups: list[Group],
    advantages: list[float | None],
    sigmas: torch.Tensor,
    config: NFTConfig,
    seeds: list[int],
    denominator: int,
) -> float:
    """Accumulate this process's share of one step's gradient: every unmasked sample of its groups
    at every sampling sigma, `micro_batch` samples of a group per forward/backward pass. The loss is
    divided by `denominator` (unmasked samples of the whole step, on every rank, times sigmas), so
    the summed gradient is the mean over the step whatever the split. Returns this share's loss."""
    total = 0.0
    offset = 0
    for group, seed in zip(groups, seeds, strict=True):
        own = advantages[offset : offset + len(group.seeds)]
        offset += len(group.seeds)
        keep = [i for i, a in enumerate(own) if a is not None]
        if not keep:
            continue
        generator = torch.Generator("cpu").manual_seed(seed)
        advantage = torch.tensor([own[i] for i in keep], dtype=torch.float32, device=group.latents.device)
        optimality = optimality_probability(advantage, config.advantage_clip)
        for sigma in sigmas[:-1]:
            # one noise draw per (group, sigma) for the whole group, so micro_batch never changes it
            x0_all = group.latents[keep]
            noise_all = torch.randn(x0_all.shape, generator=generator, dtype=torch.float32)
            for chunk in micro_batches(list(range(len(keep))), config.micro_batch):
                x0 = x0_all[chunk]
                noise = noise_all[chunk].to(x0.device, x0.dtype)
                t = sigma.expand(len(chunk))
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
                    optimality[chunk],
                    config.nft_beta,
                    config.advantage_clip,
                )
                penalty = (v_theta - v_base).square().mean(dim=sample_dims(v_theta))
                loss = (policy + config.base_penalty * penalty).sum() / denominator
                loss.backward()
                total += loss.item()
    return total


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
    step: int,
    loss: float,
    grad_norm: float,
    rollouts: list[Rollout],
    shares: list[tuple[list[float | None], list[dict[str, float]], dict[str, float]]],
) -> StepLog:
    """The step's figures over every rank's share (rewards, per-image statistics, reward monitors
    weighted by the share's size); the samples are this process's own rollouts."""
    rewards = [r for share in shares for r in share[0]]
    present = [r for r in rewards if r is not None]
    per_image = [stats for share in shares for stats in share[1]]
    statistics = {key: float(np.mean([s[key] for s in per_image])) for key in per_image[0]}
    monitors: dict[str, float] = {}
    for name in shares[0][2]:
        weighted = [(len(share[0]), share[2][name]) for share in shares if name in share[2]]
        monitors[name] = sum(n * v for n, v in weighted) / sum(n for n, _ in weighted)
    clash = statistics.keys() & monitors.keys()
    if clash:
        raise ValueError(f"reward monitors reuse image-statistic names: {sorted(clash)}")
    return StepLog(
        step=step,
        loss=loss,
        reward_mean=float(np.mean(present)) if present else None,
        reward_std=float(np.std(present)) if present else None,
        masked_fraction=1 - len(present) / len(rewards),
        grad_norm=grad_norm,
        monitors={**statistics, **monitors},
        samples=rollouts,
        images=len(rewards),
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
    ranks: Ranks | None = None,
) -> TrainResult:
    """Train a LoRA with DiffusionNFT for config.steps optimizer steps.

    Resumes from the newest complete checkpoint in checkpoint_dir when there is one (same
    config apart from steps/checkpoint_every, same prompts), continuing the identical trajectory.
    A step whose rewards are all masked makes no update (the rollout and EMA adapters stay too:
    their schedules count updates, as the reference's `global_step` does) and logs a NaN loss.
    Under torch.distributed (`ranks`, default: the current process group) each rank trains its
    share of every step's groups (`parallel.py`); rank 0 writes the checkpoints and gets `on_step`.
    """
    ranks = ranks or current_ranks()
    _check_prompts(config, prompts)
    checkpoint_dir = Path(checkpoint_dir)
    if ranks.main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.clear_partial(checkpoint_dir)
    ranks.barrier()
    prompt_ids = [p.prompt_id for p in prompts]
    found = complete_checkpoints(checkpoint_dir)
    resume = None
    if found:  # checked before the (slow) pipeline load, so a mismatch fails fast
        _, path = found[-1]
        resume = path, json.loads((path / STATE_FILE).read_text())
        check_resumable(resume[1], config, prompt_ids, path)

    family = load_family(config)
    if config.gradient_checkpointing:
        family.transformer.enable_gradient_checkpointing()
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
        chosen = ranks.mine(prompts_for_step(len(prompts), config.prompts_per_step, step, config.seed))
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
        rewards = _checked_rewards(reward_fn(rollouts), rollouts) if rollouts else RewardBatch([], {})
        statistics = [image_statistics([r.image]) for r in rollouts]
        shares = ranks.gather(
            ([r.prompt_id for r in rollouts], rewards.rewards, statistics, rewards.monitors)
        )
        labels = [label for share in shares for label in share[0]]
        everyone = group_advantages([r for share in shares for r in share[1]], labels, config.advantage_clip)
        mine_from = sum(len(share[0]) for share in shares[: ranks.rank])
        advantages = everyone[mine_from : mine_from + len(rollouts)]
        used = sum(a is not None for a in everyone)
        if used == 0:
            loss, grad_norm = float("nan"), 0.0
        else:
            optimizer.zero_grad(set_to_none=True)
            seeds = [training_seed(config.seed, step, index) for index in chosen]
            denominator = used * (len(sigmas) - 1)
            local = train_step(family, model, groups, advantages, sigmas, config, seeds, denominator)
            ranks.sum_gradients(params)
            loss = ranks.sum(local)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
            optimizer.step()
            updates += 1
            blend_adapter(model, target="old", source="default", decay=rollout_decay(config, updates))
            update_ema(ema, model)
        losses.append(loss)
        if on_step is not None and ranks.main:
            log_shares = [(share[1], share[2], share[3]) for share in shares]
            on_step(_step_log(step + 1, loss, grad_norm, rollouts, log_shares))
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            if ranks.main:
                save_checkpoint(
                    checkpoint_dir, step + 1, model, optimizer, config, prompt_ids, losses, updates
                )
            ranks.barrier()

    if ranks.main:
        _, last = complete_checkpoints(checkpoint_dir)[-1]
        export(checkpoint_dir, last)
    ranks.barrier()
    final = checkpoint_dir / "final"
    return TrainResult(
        lora_dir=final / "lora", ema_lora_dir=final / "ema", final_step=config.steps, losses=losses
    )
