"""The image model backend: one diffusers pipeline, loaded once, for editing or text-to-image.

Edit pipelines (FluxKontext, QwenImageEdit and the like) take a source image and an instruction;
text-to-image pipelines (SD3, Flux, QwenImage) take a prompt. Which one a folder holds is read
from the pipeline's own call signature, so real weights and the tiny offline pipelines from
`resources.tiny_diffusion` go through the same code.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image, ImageOps

from resources.chat import ModelRef
from resources.weights import pinned


class DiffusionBackend:
    """A diffusers pipeline for `edit` (source image + instruction) or `generate` (prompt)."""

    def __init__(
        self, model_path: str, revision: str | None = None, device: str = "cpu", dtype: str = "float32"
    ) -> None:
        self.device = device
        self.on_gpu = device.startswith("cuda")
        identity, revision = pinned(model_path, revision)
        self.pipeline: DiffusionPipeline = DiffusionPipeline.from_pretrained(
            model_path, revision=revision, dtype=getattr(torch, dtype)
        ).to(device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.model = ModelRef(model_id=model_path, revision=identity, backend="diffusers")
        self._call_params = set(inspect.signature(self.pipeline.__call__).parameters)
        # Edit pipelines take the source as `image`; text-to-image pipelines have no such input.
        self.is_edit = "image" in self._call_params

    def close(self) -> None:
        """Drop the pipeline, so its memory (CUDA included) can be freed."""
        del self.pipeline

    @property
    def task(self) -> str:
        """The pipeline's task name, as recorded with its images."""
        return "edit" if self.is_edit else "text-to-image"

    def _guidance_kwargs(self, guidance: float) -> dict[str, Any]:
        """`guidance_scale` means distilled guidance for Flux and classic CFG for SD3; Qwen-Image
        models without guidance embeddings ignore it and do true CFG only with a negative prompt."""
        transformer = getattr(self.pipeline, "transformer", None)
        distilled = bool(getattr(getattr(transformer, "config", None), "guidance_embeds", True))
        if "true_cfg_scale" in self._call_params and not distilled:
            return {"true_cfg_scale": guidance, "negative_prompt": " "}
        return {"guidance_scale": guidance}

    def _run(self, seed: int, steps: int, size: int, **kwargs: Any) -> Image.Image:
        # Latents are packed 2x2 (Flux, Qwen) or patchified by 2 (SD3): other sizes would be
        # silently cropped (Kontext) or rejected deep inside the pipeline (SD3).
        multiple = 2 * getattr(self.pipeline, "vae_scale_factor", 8)
        if size <= 0 or size % multiple:
            raise ValueError(f"size must be a positive multiple of {multiple} for this pipeline, got {size}")
        kwargs |= {"height": size, "width": size}
        if "_auto_resize" in self._call_params:
            # FluxKontext would otherwise resize the source to ~1 MP and generate at max_area 1024².
            kwargs |= {"_auto_resize": False, "max_area": size * size}
        kwargs = {key: value for key, value in kwargs.items() if key in self._call_params}
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            output = self.pipeline(
                num_inference_steps=steps, generator=generator, output_type="pil", **kwargs
            )
        return output.images[0].convert("RGB")

    def edit(
        self, source: Image.Image, instruction: str, seed: int, steps: int, guidance: float, size: int
    ) -> Image.Image:
        """The source edited by the instruction, as a size x size RGB image.

        The source is center-cropped and resized to size x size first, so the condition and the
        output share one frame (pixel-aligned edits) and the cost does not depend on the input.
        """
        if not self.is_edit:
            raise ValueError(
                f"{type(self.pipeline).__name__} ({self.model.model_id}) is a text-to-image pipeline: "
                "use generate(), or load an editing model (FluxKontext, QwenImageEdit) for edit()"
            )
        image = ImageOps.fit(source.convert("RGB"), (size, size), method=Image.Resampling.LANCZOS)
        return self._run(
            seed, steps, size, image=image, prompt=instruction, **self._guidance_kwargs(guidance)
        )

    def generate(self, prompt: str, seed: int, steps: int, guidance: float, size: int) -> Image.Image:
        """A size x size RGB image for the prompt."""
        if self.is_edit:
            raise ValueError(
                f"{type(self.pipeline).__name__} ({self.model.model_id}) is an image-editing pipeline: "
                "use edit() with a source image, or load a text-to-image model (SD3, Flux) for generate()"
            )
        return self._run(seed, steps, size, prompt=prompt, **self._guidance_kwargs(guidance))
