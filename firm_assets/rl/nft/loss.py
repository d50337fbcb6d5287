"""The DiffusionNFT objective: group advantages, the optimality probability, the forward process and
the implicit positive/negative policy loss. Pure tensor math, tested on hand-computed cases."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# A batch whose rewards are all (nearly) equal carries no preference: its advantages are 0.
MIN_REWARD_STD = 1e-4
# Floor of the adaptive weight of the x0 regression, so a perfect prediction does not divide by 0.
MIN_ERROR_WEIGHT = 1e-5


def group_advantages(
    rewards: Sequence[float | None], groups: Sequence[str], clip: float
) -> list[float | None]:
    """(reward - its group's mean) / std of the batch's rewards, clipped to +-clip.

    Masked (None) rewards stay None and take no part in any mean or std; a group whose rewards
    are all masked contributes nothing. Population std, as the reference trainers use.
    """
    if len(rewards) != len(groups):
        raise ValueError(f"{len(rewards)} rewards for {len(groups)} group labels")
    present = [r for r in rewards if r is not None]
    if not present:
        return [None] * len(rewards)
    scale = max(float(np.std(present)), MIN_REWARD_STD)
    means: dict[str, float] = {}
    for group in set(groups):
        members = [r for r, g in zip(rewards, groups, strict=True) if g == group and r is not None]
        if members:
            means[group] = float(np.mean(members))
    return [
        None if r is None else float(np.clip((r - means[g]) / scale, -clip, clip))
        for r, g in zip(rewards, groups, strict=True)
    ]


def optimality_probability(advantage: torch.Tensor, clip: float) -> torch.Tensor:
    """Map a clipped advantage in [-clip, clip] linearly to r in [0, 1] (0 advantage -> 0.5)."""
    return (0.5 + advantage / (2 * clip)).clamp(0.0, 1.0)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rectified-flow forward process x_t = (1 - t) x0 + t noise; its velocity is noise - x0."""
    t = t.view(-1, *[1] * (x0.ndim - 1))
    return (1 - t) * x0 + t * noise


def sample_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Every dimension but the batch, for per-sample reductions."""
    return tuple(range(1, x.ndim))


def _weighted_x0_error(x0_prediction: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per-sample squared x0 error divided by its own (detached) mean absolute error: every
    sample and timestep then pulls with a comparable strength, whatever its noise level."""
    error = x0_prediction - x0
    weight = error.detach().abs().mean(dim=sample_dims(error), keepdim=True).clamp(min=MIN_ERROR_WEIGHT)
    return (error.square() / weight).mean(dim=sample_dims(error))


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    optimality: torch.Tensor,
    beta: float,
    advantage_clip: float,
) -> torch.Tensor:
    """DiffusionNFT's per-sample policy loss.

    Implicit positive velocity  v+ = beta v_theta + (1 - beta) v_old,
    implicit negative velocity  v- = (1 + beta) v_old - beta v_theta.
    Each predicts x0 as x_t - t v; v+ is regressed onto the sample with weight r and v- with
    weight 1 - r. Fitting v- on a bad sample moves v_theta away from it, so good and bad samples
    both teach. Scaled by advantage_clip / beta as in the reference trainer, so the base-model
    penalty keeps the meaning it has there.
    """
    t = t.view(-1, *[1] * (x0.ndim - 1))
    positive = beta * v_theta + (1 - beta) * v_old
    negative = (1 + beta) * v_old - beta * v_theta
    positive_loss = _weighted_x0_error(x_t - t * positive, x0)
    negative_loss = _weighted_x0_error(x_t - t * negative, x0)
    return advantage_clip * (optimality * positive_loss + (1 - optimality) * negative_loss) / beta
