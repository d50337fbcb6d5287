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
"""

from __future__ import annotations

import abc
import hashlib
import io
import itertools
import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic
import torch
from diffusers import DiffusionPipeline, FluxKontextPipeline, StableDiffusion3Pipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

from firm_assets.rl.monitors import image_statistics

# LoRA goes on the attention projections of the MMDiT / Flux blocks (image and text streams).
ATTENTION_PROJECTIONS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
# FLUX.1 Kontext is guidance-distilled: this is its guidance embedding input, not CFG.
KONTEXT_GUIDANCE = 2.5
ADAM_WEIGHT_DECAY = 1e-4
# A batch whose rewards are all (nearly) equal carries no preference: its advantages are 0.
MIN_REWARD_STD = 1e-4
# Floor of the adaptive weight of the x0 regression, so a perfect prediction does not divide by 0.
MIN_ERROR_WEIGHT = 1e-5
KEEP_CHECKPOINTS = 2
ADAPTERS = ("default", "old", "ema")  # trained, rollout (slow average), evaluation (EMA)
# Fields that may change between a run and its resume without changing the trajectory so far.
RESUMABLE_CHANGES = {"steps", "checkpoint_every"}


class NFTConfig(pydantic.BaseModel, frozen=True):
    """Hyper-parameters of one DiffusionNFT run (FIRM's public trainers: k = 12-24, 512 px,
    6-10 sampling steps, LoRA rank 32 / alpha 64, gradient clip 1, advantages clipped to 5)."""

    task: Literal["edit", "gen"]
    pipeline_path: str
    steps: int = pydantic.Field(ge=1)
    prompts_per_step: int = pydantic.Field(ge=1)
    group_size: int = pydantic.Field(ge=2)
    sampling_steps: int = pydantic.Field(ge=1)
    size: int = pydantic.Field(gt=0)
    lora_rank: int = pydantic.Field(default=32, ge=1)
    lora_alpha: int = pydantic.Field(default=64, ge=1)
    learning_rate: float = pydantic.Field(gt=0)
    nft_beta: float = pydantic.Field(gt=0)
    old_decay: float = pydantic.Field(ge=0, le=1)
    ema_decay: float = pydantic.Field(ge=0, le=1)
    base_penalty: float = pydantic.Field(ge=0)
    grad_clip: float = pydantic.Field(default=1.0, gt=0)
    advantage_clip: float = pydantic.Field(default=5.0, gt=0)
    seed: int = 0
    checkpoint_every: int = pydantic.Field(default=1, ge=1)
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(frozen=True)
class PromptItem:
    prompt_id: str  # stable id; editing groups are keyed by (instruction, source sha)
    text: str
    source: Image.Image | None = None  # editing source image; None for generation


@dataclass(frozen=True)
class Rollout:
    prompt_id: str
    text: str
    source: Image.Image | None  # for editing: the source as the policy saw it (fitted to size)
    image: Image.Image
    seed: int


@dataclass(frozen=True)
class RewardBatch:
    rewards: list[float | None]  # one per rollout, None = masked out of the advantage
    monitors: dict[str, float]  # e.g. held-out critic divergence; logged with the step


RewardFn = Callable[[list[Rollout]], RewardBatch]


@dataclass(frozen=True)
class StepLog:
    step: int
    loss: float  # NaN when every reward of the step was masked (no update was made)
    reward_mean: float | None
    reward_std: float | None
    masked_fraction: float
    grad_norm: float
    monitors: dict[str, float]  # image statistics + RewardBatch.monitors
    samples: list[Rollout]


@dataclass(frozen=True)
class TrainResult:
    lora_dir: Path  # final trained LoRA (peft adapter folder)
    ema_lora_dir: Path  # EMA LoRA for evaluation
    final_step: int
    losses: list[float]  # per optimizer step, including steps before a resume


def prompt_id(text: str, source: Image.Image | None = None) -> str:
    """A stable group key: the text alone for generation, text + source pixels for editing (the
    same instruction on two sources is two groups)."""
    digest = hashlib.sha256(text.encode())
    if source is not None:
        buffer = io.BytesIO()
        source.convert("RGB").save(buffer, format="PNG")
        digest.update(b"\0" + hashlib.sha256(buffer.getvalue()).digest())
    return digest.hexdigest()[:16]


# --- pure math -------------------------------------------------------------------------------


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


def _sample_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _weighted_x0_error(x0_prediction: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per-sample squared x0 error divided by its own (detached) mean absolute error: every
    sample and timestep then pulls with a comparable strength, whatever its noise level."""
    error = x0_prediction - x0
    weight = error.detach().abs().mean(dim=_sample_dims(error), keepdim=True).clamp(min=MIN_ERROR_WEIGHT)
    return (error.square() / weight).mean(dim=_sample_dims(error))


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


# --- pipeline families -----------------------------------------------------------------------

Condition = dict[str, torch.Tensor]


class _Family(abc.ABC):
    """What DiffusionNFT needs from a pipeline: conditioning, initial noise, velocity, decoding."""

    def __init__(self, pipeline: DiffusionPipeline, size: int) -> None:
        multiple = 2 * pipeline.vae_scale_factor
        if size % multiple:
            raise ValueError(f"size must be a multiple of {multiple} for this pipeline, got {size}")
        self.pipeline = pipeline
        self.size = size
        self.transformer = pipeline.transformer
        self.device = pipeline.transformer.device
        self.dtype = pipeline.transformer.dtype

    def sigmas(self, steps: int) -> torch.Tensor:
        """The sampling sigmas (noise levels) from 1 towards 0, ending with 0, shifted by the
        pipeline's scheduler (resolution-dependent where it is configured so, as Flux is)."""
        scheduler = self.pipeline.scheduler
        mu = None
        if scheduler.config.get("use_dynamic_shifting", False):
            image_tokens = (self.size // (2 * self.pipeline.vae_scale_factor)) ** 2
            mu = calculate_shift(
                image_tokens,
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.15),
            )
        scheduler.set_timesteps(sigmas=list(np.linspace(1.0, 1 / steps, steps)), mu=mu)
        return scheduler.sigmas.to(torch.float32).cpu()

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.pipeline.vae
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        pixels = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self.pipeline.image_processor.postprocess(pixels, output_type="pil")

    def shown_source(self, item: PromptItem) -> Image.Image | None:
        """The source image as the policy saw it (None for text-to-image)."""
        return None

    @abc.abstractmethod
    def condition(self, item: PromptItem) -> Condition:
        """Prompt (and source) conditioning, batch 1, computed once per group."""

    @abc.abstractmethod
    def noise(self, seed: int) -> torch.Tensor:
        """The initial noise for one image, drawn as the pipeline draws it for this seed."""

    @abc.abstractmethod
    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, condition: Condition) -> torch.Tensor:
        """The transformer's velocity for latents at noise level sigma (one per row)."""

    @abc.abstractmethod
    def images(self, latents: torch.Tensor) -> list[Image.Image]:
        """Clean latents to RGB images."""


def _expand(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    return tensor.expand(batch, *tensor.shape[1:])


class _SD3(_Family):
    """StableDiffusion3: MMDiT on 16-channel latents, timestep on the 0-1000 scale."""

    def condition(self, item: PromptItem) -> Condition:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=item.text,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
        )
        return {"embeds": embeds, "pooled": pooled}

    def noise(self, seed: int) -> torch.Tensor:
        channels = self.transformer.config.in_channels
        generator = torch.Generator("cpu").manual_seed(seed)
        return self.pipeline.prepare_latents(
            1, channels, self.size, self.size, self.dtype, self.device, generator
        )

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, condition: Condition) -> torch.Tensor:
        batch = latents.shape[0]
        return self.transformer(
            hidden_states=latents,
            timestep=(sigma * 1000).to(self.device, self.dtype),
            encoder_hidden_states=_expand(condition["embeds"], batch),
            pooled_projections=_expand(condition["pooled"], batch),
            return_dict=False,
        )[0]

    def images(self, latents: torch.Tensor) -> list[Image.Image]:
        return self.decode(latents)


class _Kontext(_Family):
    """FluxKontext: packed 2x2 latent tokens; the source's latent tokens ride along after the
    noisy ones (their ids marked 1) and only the noisy tokens' velocity is used."""

    def _packed(self, source_latents: torch.Tensor | None) -> tuple:
        channels = self.transformer.config.in_channels // 4
        # `latents` is given so that prepare_latents draws nothing; only its other outputs are used.
        return self.pipeline.prepare_latents(
            source_latents,
            1,
            channels,
            self.size,
            self.size,
            self.dtype,
            self.device,
            None,
            torch.zeros(1, device=self.device, dtype=self.dtype),
        )

    def shown_source(self, item: PromptItem) -> Image.Image | None:
        """Centre-cropped and resized to the output frame, as `DiffusionBackend.edit` does, so
        source and edit are pixel-aligned for the critic."""
        assert item.source is not None  # checked up front in train_policy
        return ImageOps.fit(
            item.source.convert("RGB"), (self.size, self.size), method=Image.Resampling.LANCZOS
        )

    def condition(self, item: PromptItem) -> Condition:
        embeds, pooled, text_ids = self.pipeline.encode_prompt(
            prompt=item.text, prompt_2=None, device=self.device
        )
        pixels = self.pipeline.image_processor.preprocess(self.shown_source(item), self.size, self.size)
        vae = self.pipeline.vae
        encoded = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()
        source_latents = (encoded - vae.config.shift_factor) * vae.config.scaling_factor
        _, image_latents, latent_ids, image_ids = self._packed(source_latents)
        return {
            "embeds": embeds,
            "pooled": pooled,
            "text_ids": text_ids,
            "image_latents": image_latents,
            "ids": torch.cat([latent_ids, image_ids], dim=0),
        }

    def noise(self, seed: int) -> torch.Tensor:
        channels = self.transformer.config.in_channels // 4
        generator = torch.Generator("cpu").manual_seed(seed)
        latents, *_ = self.pipeline.prepare_latents(
            None, 1, channels, self.size, self.size, self.dtype, self.device, generator
        )
        return latents

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, condition: Condition) -> torch.Tensor:
        batch, tokens = latents.shape[:2]
        prediction = self.transformer(
            hidden_states=torch.cat([latents, _expand(condition["image_latents"], batch)], dim=1),
            timestep=sigma.to(self.device, self.dtype),
            guidance=torch.full((batch,), KONTEXT_GUIDANCE, device=self.device, dtype=torch.float32),
            pooled_projections=_expand(condition["pooled"], batch),
            encoder_hidden_states=_expand(condition["embeds"], batch),
            txt_ids=condition["text_ids"],
            img_ids=condition["ids"],
            return_dict=False,
        )[0]
        return prediction[:, :tokens]

    def images(self, latents: torch.Tensor) -> list[Image.Image]:
        unpacked = self.pipeline._unpack_latents(
            latents, self.size, self.size, self.pipeline.vae_scale_factor
        )
        return self.decode(unpacked)


def _load_family(config: NFTConfig) -> _Family:
    pipeline = DiffusionPipeline.from_pretrained(config.pipeline_path, dtype=getattr(torch, config.dtype))
    pipeline = pipeline.to(config.device)
    expected = {"gen": StableDiffusion3Pipeline, "edit": FluxKontextPipeline}[config.task]
    if not isinstance(pipeline, expected):
        raise ValueError(
            f"task {config.task!r} needs a {expected.__name__} here, but {config.pipeline_path} holds a "
            f"{type(pipeline).__name__}"
        )
    for part in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer"):
        module = getattr(pipeline, part, None)
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    return (_SD3 if config.task == "gen" else _Kontext)(pipeline, config.size)


# --- adapters --------------------------------------------------------------------------------


def _add_adapters(family: _Family, config: NFTConfig) -> PeftModel:
    """Trained, old and EMA LoRA adapters on the attention projections; old and EMA start as
    copies of the trained one (which, with B = 0, starts as the base model)."""
    names = {
        name for name, module in family.transformer.named_modules() if isinstance(module, torch.nn.Linear)
    }
    targets = sorted({p for p in ATTENTION_PROJECTIONS if any(n.endswith("." + p) for n in names)})
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = get_peft_model(family.transformer, lora, adapter_name="default")
        for name in ADAPTERS[1:]:
            model.add_adapter(name, lora)
    for name in ADAPTERS[1:]:
        _blend_adapter(model, target=name, source="default", decay=0.0)
    model.set_adapter("default")
    return model


def _adapter_params(model: PeftModel, adapter: str) -> dict[str, torch.nn.Parameter]:
    """The adapter's LoRA tensors keyed by their name with the adapter name taken out."""
    marker = f".{adapter}."
    return {
        name.replace(marker, "."): param
        for name, param in model.named_parameters()
        if ".lora_" in name and marker in name
    }


@torch.no_grad()
def _blend_adapter(model: PeftModel, target: str, source: str, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source."""
    sources = _adapter_params(model, source)
    for name, param in _adapter_params(model, target).items():
        param.mul_(decay).add_(sources[name], alpha=1 - decay)


def _save_adapter(model: PeftModel, adapter: str, folder: Path) -> None:
    """A standard peft adapter folder (adapter_config.json + adapter_model.safetensors) that
    `PeftModel.from_pretrained(transformer, folder)` loads."""
    folder.mkdir(parents=True)
    state = get_peft_model_state_dict(model, adapter_name=adapter)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state.items()}, folder / "adapter_model.safetensors"
    )
    model.peft_config[adapter].save_pretrained(str(folder))


def _load_adapter(model: PeftModel, adapter: str, folder: Path, device: torch.device) -> None:
    tensors = load_file(folder / "adapter_model.safetensors", device=str(device))
    result = set_peft_model_state_dict(model, tensors, adapter_name=adapter)
    if result.unexpected_keys:
        raise ValueError(f"{folder} holds tensors this model lacks: {result.unexpected_keys[:3]}")


# --- rollouts and training ---------------------------------------------------------------------


@dataclass
class _Group:
    condition: Condition
    seeds: list[int]
    latents: torch.Tensor  # clean x0, one row per sample
    rollouts: list[Rollout]


@torch.no_grad()
def _rollout_group(
    family: _Family, model: PeftModel, item: PromptItem, seeds: list[int], sigmas: torch.Tensor
) -> _Group:
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
    return _Group(condition=condition, seeds=seeds, latents=latents, rollouts=rollouts)


def _train_step(
    family: _Family,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    groups: list[_Group],
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
            penalty = (v_theta - v_base).square().mean(dim=_sample_dims(v_theta))
            loss = (policy + config.base_penalty * penalty).sum() / denominator
            loss.backward()
            total += loss.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    _blend_adapter(model, target="old", source="default", decay=config.old_decay)
    _blend_adapter(model, target="ema", source="default", decay=config.ema_decay)
    return total, float(grad_norm)


# --- checkpoints -----------------------------------------------------------------------------

STEP_PREFIX = "step-"


def _step_dir(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"{STEP_PREFIX}{step:08d}"


def _complete_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints, oldest first. Only renamed (complete) folders carry the prefix."""
    found = []
    for path in checkpoint_dir.glob(f"{STEP_PREFIX}*"):
        suffix = path.name[len(STEP_PREFIX) :]
        if path.is_dir() and suffix.isdigit() and (path / "state.json").is_file():
            found.append((int(suffix), path))
    return sorted(found)


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    config: NFTConfig,
    prompt_ids: list[str],
    losses: list[float],
) -> None:
    """Write into a hidden temporary folder, then rename: a crash never leaves a folder that
    looks complete. Older checkpoints beyond KEEP_CHECKPOINTS are removed afterwards."""
    final = _step_dir(checkpoint_dir, step)
    tmp = checkpoint_dir / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for adapter in ADAPTERS:
        _save_adapter(model, adapter, tmp / adapter)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    state = {
        "step": step,
        "losses": losses,
        "config": config.model_dump(),
        "prompt_ids": prompt_ids,
        "rng": _rng_state(),
    }
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():  # the same step of the same trajectory, written before a resume
        shutil.rmtree(final)
    tmp.rename(final)
    for _, old in _complete_checkpoints(checkpoint_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)


def _check_resumable(state: dict, config: NFTConfig, prompt_ids: list[str], path: Path) -> None:
    saved = state["config"]
    changed = sorted(
        key
        for key, value in config.model_dump().items()
        if key not in RESUMABLE_CHANGES and saved.get(key) != value
    )
    if changed:
        raise ValueError(
            f"checkpoint {path} was written with a different config ({', '.join(changed)}); use a new "
            "checkpoint_dir or the same settings"
        )
    if state["prompt_ids"] != prompt_ids:
        raise ValueError(
            f"checkpoint {path} was trained on a different prompt list; use a new checkpoint_dir"
        )
    if state["step"] > config.steps:
        raise ValueError(f"checkpoint {path} is already at step {state['step']}, past steps={config.steps}")


def _load_checkpoint(
    path: Path, state: dict, model: PeftModel, optimizer: torch.optim.Optimizer, device: torch.device
) -> None:
    for adapter in ADAPTERS:
        _load_adapter(model, adapter, path / adapter, device)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location=device))
    _restore_rng(state["rng"])


def _export(checkpoint_dir: Path, step_dir: Path) -> tuple[Path, Path]:
    """Copy the final trained and EMA adapters to checkpoint_dir/final, replacing older ones."""
    final = checkpoint_dir / "final"
    tmp = checkpoint_dir / f".tmp-final-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    shutil.copytree(step_dir / "default", tmp / "lora")
    shutil.copytree(step_dir / "ema", tmp / "ema")
    (tmp / "step").write_text(step_dir.name[len(STEP_PREFIX) :])
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final / "lora", final / "ema"


# --- the loop ----------------------------------------------------------------------------------


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
    A step whose rewards are all masked makes no update and logs a NaN loss.
    """
    _check_prompts(config, prompts)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for stale in checkpoint_dir.glob(".tmp-*"):  # left by a crashed writer
        shutil.rmtree(stale)
    prompt_ids = [p.prompt_id for p in prompts]
    checkpoints = _complete_checkpoints(checkpoint_dir)
    resume = None
    if checkpoints:  # checked before the (slow) pipeline load, so a mismatch fails fast
        _, path = checkpoints[-1]
        resume = path, json.loads((path / "state.json").read_text())
        _check_resumable(resume[1], config, prompt_ids, path)

    family = _load_family(config)
    model = _add_adapters(family, config)
    model.train()
    params = [p for _, p in sorted(_adapter_params(model, "default").items())]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=ADAM_WEIGHT_DECAY)
    sigmas = family.sigmas(config.sampling_steps)

    losses: list[float] = []
    start = 0
    if resume is not None:
        path, state = resume
        _load_checkpoint(path, state, model, optimizer, family.device)
        start, losses = state["step"], list(state["losses"])

    for step in range(start, config.steps):
        chosen = prompts_for_step(len(prompts), config.prompts_per_step, step, config.seed)
        groups = [
            _rollout_group(
                family,
                model,
                prompts[index],
                [rollout_seed(config.seed, step, index, j) for j in range(config.group_size)],
                sigmas,
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
            loss, grad_norm = _train_step(
                family, model, optimizer, params, groups, advantages, sigmas, config, generator
            )
        losses.append(loss)
        if on_step is not None:
            on_step(_step_log(step + 1, loss, grad_norm, rollouts, rewards))
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            _save_checkpoint(checkpoint_dir, step + 1, model, optimizer, config, prompt_ids, losses)

    _, last = _complete_checkpoints(checkpoint_dir)[-1]
    lora_dir, ema_dir = _export(checkpoint_dir, last)
    return TrainResult(lora_dir=lora_dir, ema_lora_dir=ema_dir, final_step=config.steps, losses=losses)
