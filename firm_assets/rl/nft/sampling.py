"""Rollouts: sample a prompt group's images with the rollout ("old") adapter."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from peft import PeftModel

from firm_assets.rl.nft.pipelines import Condition, Family
from firm_assets.rl.nft.records import PromptItem, Rollout


@dataclass
class Group:
    condition: Condition
    seeds: list[int]
    latents: torch.Tensor  # clean x0, one row per sample
    rollouts: list[Rollout]


@torch.no_grad()
def rollout_group(
    family: Family, model: PeftModel, item: PromptItem, seeds: list[int], sigmas: torch.Tensor
) -> Group:
    """Deterministic Euler sampling with the old adapter, x <- x + (sigma_next - sigma) v."""
    model.set_adapter("old")
    condition = family.condition(item)
    latents = torch.cat([family.noise(seed) for seed in seeds])
    for sigma, next_sigma in itertools.pairwise(sigmas):
        velocity = family.velocity(latents, sigma.expand(len(seeds)), condition)
        latents = latents + (next_sigma - sigma).item() * velocity
    model.set_adapter("default")
    source = family.shown_source(item)
    rollouts = [
        Rollout(prompt_id=item.prompt_id, text=item.text, source=source, image=image, seed=seed)
        for image, seed in zip(family.images(latents), seeds, strict=True)
    ]
    return Group(condition=condition, seeds=seeds, latents=latents, rollouts=rollouts)
