"""What DiffusionNFT needs from a pipeline family (conditioning, initial noise, velocity, decoding),
for StableDiffusion3 (text-to-image) and FluxKontext (editing)."""

from __future__ import annotations

import abc

import numpy as np
import torch
from diffusers import DiffusionPipeline, FluxKontextPipeline, StableDiffusion3Pipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from PIL import Image, ImageOps

from firm_assets.rl.nft.config import NFTConfig
from firm_assets.rl.nft.records import PromptItem

# FLUX.1 Kontext is guidance-distilled: this is its guidance embedding input, not CFG.
KONTEXT_GUIDANCE = 2.5

Condition = dict[str, torch.Tensor]


class Family(abc.ABC):
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
        """Latents to images through the pipeline's VAE, shared by both families."""
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


def expand(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeats a one-row condition across a batch without copying it."""
    return tensor.expand(batch, *tensor.shape[1:])


class SD3(Family):
    """StableDiffusion3: MMDiT on 16-channel latents, timestep on the 0-1000 scale."""

    def condition(self, item: PromptItem) -> Condition:
        """Encodes the prompt once per group."""
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=item.text,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
        )
        return {"embeds": embeds, "pooled": pooled}

    def noise(self, seed: int) -> torch.Tensor:
        """Seeded starting latents, so a rollout is reproducible from its seed."""
        channels = self.transformer.config.in_channels
        generator = torch.Generator("cpu").manual_seed(seed)
        return self.pipeline.prepare_latents(
            1, channels, self.size, self.size, self.dtype, self.device, generator
        )

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, condition: Condition) -> torch.Tensor:
        """The transformer's flow-matching velocity for these latents."""
        batch = latents.shape[0]
        return self.transformer(
            hidden_states=latents,
            timestep=(sigma * 1000).to(self.device, self.dtype),
            encoder_hidden_states=expand(condition["embeds"], batch),
            pooled_projections=expand(condition["pooled"], batch),
            return_dict=False,
        )[0]

    def images(self, latents: torch.Tensor) -> list[Image.Image]:
        """Final latents to images for the reward."""
        return self.decode(latents)


class Kontext(Family):
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
        """Encodes the instruction and the source image once per group."""
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
        """Seeded starting latents in Kontext's packed layout."""
        channels = self.transformer.config.in_channels // 4
        generator = torch.Generator("cpu").manual_seed(seed)
        latents, *_ = self.pipeline.prepare_latents(
            None, 1, channels, self.size, self.size, self.dtype, self.device, generator
        )
        return latents

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, condition: Condition) -> torch.Tensor:
        """The transformer's velocity, with the source image tokens appended as context."""
        batch, tokens = latents.shape[:2]
        prediction = self.transformer(
            hidden_states=torch.cat([latents, expand(condition["image_latents"], batch)], dim=1),
            timestep=sigma.to(self.device, self.dtype),
            guidance=torch.full((batch,), KONTEXT_GUIDANCE, device=self.device, dtype=torch.float32),
            pooled_projections=expand(condition["pooled"], batch),
            encoder_hidden_states=expand(condition["embeds"], batch),
            txt_ids=condition["text_ids"],
            img_ids=condition["ids"],
            return_dict=False,
        )[0]
        return prediction[:, :tokens]

    def images(self, latents: torch.Tensor) -> list[Image.Image]:
        """Unpacks and decodes final latents to images for the reward."""
        unpacked = self.pipeline._unpack_latents(
            latents, self.size, self.size, self.pipeline.vae_scale_factor
        )
        return self.decode(unpacked)


def load_family(config: NFTConfig) -> Family:
    """Loads the pipeline and wraps it in the family its task needs, refusing a mismatch."""
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
    return (SD3 if config.task == "gen" else Kontext)(pipeline, config.size)
