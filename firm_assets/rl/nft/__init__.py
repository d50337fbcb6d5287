"""DiffusionNFT (arXiv 2509.16117): online RL for flow-matching image models on the forward process.

Followed side by side with NVlabs/DiffusionNFT `scripts/train_nft_sd3.py` and VisionXLab/FIRM-Reward
`editing/scripts/train_nft_kontext.py`. One optimizer step, top to bottom:
1. Pick `prompts_per_step` prompts; sample `group_size` images for each with the *rollout* ("old")
   LoRA adapter, deterministically with a second-order DPM-Solver (or Euler), keeping the clean
   latents x0 and the conditioning.
2. Score the images with the caller's reward function; a masked (None) reward drops its image.
3. Advantage = (reward - prompt-group mean) / batch std, clipped; mapped to an optimality
   probability r in [0, 1].
4. Re-noise each x0 on the forward process, x_t = (1 - t) x0 + t noise, at every sampling sigma and
   ask the trained adapter, the old adapter and the base model (adapters off) for velocities. The
   trained and old velocities form an implicit positive policy (to fit where r is high) and an
   implicit negative one (to fit where r is low); no likelihoods and no sampler are differentiated.
5. Add base_penalty * ||v_theta - v_base||^2, clip the gradient norm, AdamW, then move the rollout
   adapter (decay min(0.001 s, 0.5)) and the EMA adapter (diffusers' EMAModel, warm-up to 0.9)
   towards the trained one.

The package follows the method: `config` (settings and the rollout schedule), `records` (what goes
in and out), `loss` (advantages and the NFT objective), `pipelines` (what the method needs from
StableDiffusion3 / FluxKontext, real or tiny), `sampling` (rollouts), `adapters` (trained, rollout
and EMA LoRA), `resume` (checkpoints), `loop` (`train_policy`). Nothing is imported here, so the
asset definitions can read `config` and `records` without loading torch and diffusers.
"""
