"""Rollouts: sample a prompt group's images with the rollout ("old") adapter.

The default solver is the references' deterministic second-order multistep DPM-Solver++ on the flow
ODE (DiffusionNFT `flow_grpo/diffusers_patch/solver.py`, `dpm_step` with order 2; FIRM-Reward
`editing/config/kontext_nft_qwen3vl_8b.py`: `sample.solver = "dpm2"`). It is diffusers'
`DPMSolverMultistepScheduler` (flow prediction and flow sigmas, first order at the first and last
step, as the reference's `lower_order_final`), run on the pipeline's own sigma schedule. Euler
(x <- x + (sigma_next - sigma) v) is the first-order option.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DPMSolverMultistepScheduler
from peft import PeftModel

from firm_assets.rl.nft.config import Solver
from firm_assets.rl.nft.pipelines import Condition, Family
from firm_assets.rl.nft.records import PromptItem, Rollout

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (latents, sigma) -> velocity


def dpm_solver(sigmas: torch.Tensor) -> DPMSolverMultistepScheduler:
    """diffusers' DPM-Solver++(2M) for flow matching, set to step through `sigmas` (ending at 0)."""
    scheduler = DPMSolverMultistepScheduler(
        solver_order=2,
        algorithm_type="dpmsolver++",
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(len(sigmas) - 1)
    scheduler.sigmas = sigmas.to(torch.float32).cpu()
    scheduler.timesteps = sigmas[:-1] * scheduler.config.num_train_timesteps
    scheduler.set_begin_index(0)
    return scheduler


def solve(velocity: Velocity, latents: torch.Tensor, sigmas: torch.Tensor, solver: Solver) -> torch.Tensor:
    """Integrate the flow ODE from noise (sigmas[0]) to data (sigmas[-1] = 0), deterministically."""
    if solver == "euler":
        for sigma, next_sigma in itertools.pairwise(sigmas):
            latents = latents + (next_sigma - sigma).item() * velocity(latents, sigma)
        return latents
    scheduler = dpm_solver(sigmas)
    for sigma, timestep in zip(sigmas[:-1], scheduler.timesteps, strict=True):
        prediction = velocity(latents, sigma)
        latents = scheduler.step(prediction, timestep, latents, return_dict=False)[0]
    return latents


@dataclass
class Group:
    """One prompt's rollouts and the latents the loss trains on."""

    condition: Condition
    seeds: list[int]
    latents: torch.Tensor  # clean x0, one row per sample
    rollouts: list[Rollout]


@torch.no_grad()
def rollout_group(
    family: Family,
    model: PeftModel,
    item: PromptItem,
    seeds: list[int],
    sigmas: torch.Tensor,
    solver: Solver,
) -> Group:
    """The group's images from the rollout adapter, one initial noise per seed."""
    model.set_adapter("old")
    condition = family.condition(item)
    noise = torch.cat([family.noise(seed) for seed in seeds])
    latents = solve(
        lambda x, sigma: family.velocity(x, sigma.expand(len(seeds)), condition), noise, sigmas, solver
    )
    model.set_adapter("default")
    source = family.shown_source(item)
    rollouts = [
        Rollout(prompt_id=item.prompt_id, text=item.text, source=source, image=image, seed=seed)
        for image, seed in zip(family.images(latents), seeds, strict=True)
    ]
    return Group(condition=condition, seeds=seeds, latents=latents, rollouts=rollouts)
