"""DiffusionNFT (arXiv 2509.16117): online RL for flow-matching image models on the forward process.

One optimizer step, top to bottom:
1. Pick `prompts_per_step` prompts; sample `group_size` images for each with the *old* LoRA adapter
   (a slow average of the trained one), keeping the clean latents x0 and the conditioning.
2. Score the images with the caller's reward function; a masked (None) reward drops its image.
3. Advantage = (reward - prompt-group mean) / batch std, clipped; mapped to an optimality
   probability r in [0, 1].
4. Re-noise each x0 on the forward process, x_t = (1 - t) x0 + t noise, at every sampling sigma and
   ask the trained adapter, the old adapter and the base model (adapters off) for velocities. The
   trained and old velocities form an implicit positive policy (to fit where r is high) and an
   implicit negative one (to fit where r is low); no likelihoods and no sampler are differentiated.
5. Add base_penalty * ||v_theta - v_base||^2, clip the gradient norm, AdamW, then move the old and
   EMA adapters towards the trained one.

Supported pipelines: StableDiffusion3 (text-to-image) and FluxKontext (editing), real weights or
the tiny offline ones from `resources.tiny_diffusion`. Sampling is deterministic Euler without CFG
(as in the DiffusionNFT recipes), so rollouts and training share one velocity function per family.
Checkpoints hold everything needed to continue the exact same trajectory.

The package follows the method: `loss` (advantages and the NFT objective), `pipelines` (what the
method needs from SD3 / FluxKontext), `sampling` (rollouts), `adapters` (trained, old and EMA
LoRA), `resume` (checkpoints), `loop` (one optimizer step after another). The names below are the
trainer's public surface.
"""

from firm_assets.rl.nft.config import NFTConfig
from firm_assets.rl.nft.loop import train_policy
from firm_assets.rl.nft.records import PromptItem, RewardBatch, RewardFn, Rollout, StepLog, TrainResult

__all__ = [
    "NFTConfig",
    "PromptItem",
    "RewardBatch",
    "RewardFn",
    "Rollout",
    "StepLog",
    "TrainResult",
    "train_policy",
]
