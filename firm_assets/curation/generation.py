"""Image-model calls (editing and text-to-image) through the same cache as chat stages.

A generated image is cached by model + revision, sampler settings, seed and the content of its
inputs; its bytes are stored by hash, so a re-run never re-renders an unchanged candidate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from firm_assets.curation.cache import (
    CachedResult,
    CacheItem,
    CallSpec,
    Outcome,
    StageStats,
    calls_per_second,
    failed_outcome,
    run_cached,
)
from firm_assets.curation.costs import CostMeter
from firm_assets.curation.images import save_generated
from firm_assets.curation.records import record_images
from firm_assets.curation.versioning import short_hash
from resources.chat import load_rgb
from resources.home import firm_home
from resources.profiles import ImageModelConfig
from warehouse.connection import Warehouse

IMAGE_OUTPUT = "png@1"


@dataclass(frozen=True)
class Owner:
    """What images are made for: id, text (instruction or prompt), and a source image for edits."""

    owner_id: str
    text: str
    source_path: str | None = None
    source_sha: str | None = None


@dataclass(frozen=True)
class ImageJob:
    """One image to make: its owner's text (and source image, for an edit) with a seed."""

    sample_id: str
    owner: Owner
    seed: int


def run_image_stage(
    stage: str,
    template_ref: str,
    config: ImageModelConfig,
    backend,
    jobs: Sequence[ImageJob],
    warehouse: Warehouse,
    store: Path,
    run_id: str | None,
) -> tuple[dict[str, CachedResult], StageStats]:
    """Render every cache-missing job one at a time (diffusion batches are per-image anyway). A render
    that raises is that job's failure: a missing or undecodable source image is cached as one, out of
    memory or any other model exception is transient and rendered again by the next run."""
    edits = any(job.owner.source_sha for job in jobs)
    render = _editor(backend, config) if edits else _generator(backend, config)
    items = [
        CacheItem(
            job.sample_id, {"text": job.owner.text, "seed": job.seed, "source": job.owner.source_sha}, job
        )
        for job in jobs
    ]

    made = 0  # images rendered now (not found in the cache)

    def compute(batch: list[ImageJob]) -> list[Outcome]:
        nonlocal made
        outcomes, stored = [], []
        for job in batch:
            started = time.perf_counter()
            try:
                image = save_generated(render(job), store)
            except Exception as error:  # this image's failure, recorded; the other renders go on
                outcomes.append(failed_outcome(error))
                continue
            stored.append(image)
            parsed = {"image_sha": image.sha256, "image_path": str(image.path)}
            outcomes.append(Outcome(image.sha256, parsed, None, 1, time.perf_counter() - started))
        record_images(warehouse, stored)
        made += len(stored)
        return outcomes

    decoding = {
        "steps": config.steps,
        "guidance": config.guidance,
        "size": config.size,
        "dtype": config.dtype,
    }
    spec = CallSpec(stage, backend.model, template_ref, IMAGE_OUTPUT, decoding)
    results, stats = run_cached(warehouse, spec, items, compute, batch_size=4, run_id=run_id)
    stats.images_generated, stats.on_gpu = made, backend.on_gpu
    return results, stats


def _editor(backend, config: ImageModelConfig) -> Callable[[ImageJob], Image.Image]:
    def render(job: ImageJob) -> Image.Image:
        source = load_rgb(Path(job.owner.source_path))
        return backend.edit(source, job.owner.text, job.seed, config.steps, config.guidance, config.size)

    return render


def _generator(backend, config: ImageModelConfig) -> Callable[[ImageJob], Image.Image]:
    def render(job: ImageJob) -> Image.Image:
        return backend.generate(job.owner.text, job.seed, config.steps, config.guidance, config.size)

    return render


@dataclass(frozen=True)
class Rendered:
    """One image made (or found in the cache) for an owner (a request or a prompt)."""

    image_id: str
    owner_id: str
    config: ImageModelConfig
    revision: str
    seed: int
    image_sha: str
    image_path: str
    cache_key: str


def render_for_all(
    stage: str,
    template_ref: str,
    configs: Sequence[ImageModelConfig],
    seeds: Sequence[int],
    owners: Sequence[Owner],
    models,
    warehouse: Warehouse,
    run_id: str | None,
    meter: CostMeter,
) -> tuple[list[Rendered], dict[str, float]]:
    """Every config x seed for every owner through the cache; failed renders are left out (counted);
    each config's cost goes to `meter`."""
    rendered: list[Rendered] = []
    metadata: dict[str, float] = {}
    for config in configs:
        backend = models.image_backend(config)
        jobs = {}
        for owner in owners:
            for seed in seeds:
                # two configs of one model (other steps or guidance) make different images
                image_id = short_hash(
                    owner.owner_id, config.model, config.steps, config.guidance, config.size, seed
                )
                jobs[image_id] = ImageJob(image_id, owner, seed)
        results, stats = run_image_stage(
            stage,
            template_ref,
            config,
            backend,
            list(jobs.values()),
            warehouse,
            firm_home() / "images",
            run_id,
        )
        counts = meter.add(stats).as_metadata()
        counts["renders"] = counts.pop("rows")  # jobs asked for; the asset's `rows` is what it outputs
        for key, value in counts.items():
            metadata[key] = metadata.get(key, 0) + value
        for image_id, result in results.items():
            if result.outcome.ok:
                job = jobs[image_id]
                rendered.append(
                    Rendered(
                        image_id,
                        job.owner.owner_id,
                        config,
                        backend.model.revision,
                        job.seed,
                        result.outcome.parsed["image_sha"],
                        result.outcome.parsed["image_path"],
                        result.cache_key,
                    )
                )
    # a rate does not add up over configs: it is the configs' calls over their wall time together
    # no configs (a profile that only imports its edits): nothing rendered, no calls
    metadata["calls_per_s"] = calls_per_second(
        int(metadata.get("model_calls", 0)), metadata.get("wall_seconds", 0.0)
    )
    return rendered, metadata
