"""The diffusers backend on tiny offline pipelines of the production architectures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from diffusers import DiffusionPipeline, FluxKontextPipeline, StableDiffusion3Pipeline
from PIL import Image

from resources.chat import ModelRef
from resources.diffusion import DiffusionBackend
from resources.tiny_diffusion import MARKER, build_tiny_diffusion
from resources.weights import folder_digest

SIZE = 64
STEPS = 2


@pytest.fixture(scope="session")
def tiny_diffusion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both tiny pipelines, built once per session."""
    return build_tiny_diffusion(tmp_path_factory.mktemp("tiny-diffusion"))


@pytest.fixture(scope="session")
def editor(tiny_diffusion: dict[str, Path]) -> DiffusionBackend:
    return DiffusionBackend(str(tiny_diffusion["tiny-flux-kontext"]))


@pytest.fixture(scope="session")
def generator(tiny_diffusion: dict[str, Path]) -> DiffusionBackend:
    return DiffusionBackend(str(tiny_diffusion["tiny-sd3"]))


@pytest.fixture
def source() -> Image.Image:
    """A non-square noisy image, so the crop-and-resize path is exercised."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_build_is_fast_marked_and_idempotent(tiny_diffusion: dict[str, Path], tmp_path: Path) -> None:
    # A second, independent build takes seconds and gives byte-identical weights (it is seeded).
    # CPU seconds (every thread's), not wall time: a loaded machine stretches the wall, not the work
    start = time.process_time()
    other = build_tiny_diffusion(tmp_path)
    assert time.process_time() - start < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-flux-kontext", "tiny-sd3"]  # no temp dirs
    for name, pipeline in (
        ("tiny-flux-kontext", "FluxKontextPipeline"),
        ("tiny-sd3", "StableDiffusion3Pipeline"),
    ):
        assert folder_digest(other[name]) == folder_digest(tiny_diffusion[name])
        assert json.loads((other[name] / MARKER).read_text())["pipeline"] == pipeline
    # Built already: nothing is rewritten.
    marker = other["tiny-sd3"] / MARKER
    before = marker.stat().st_mtime_ns
    start = time.process_time()
    assert build_tiny_diffusion(tmp_path) == other
    assert time.process_time() - start < 0.5
    assert marker.stat().st_mtime_ns == before


def test_loads_with_from_pretrained(tiny_diffusion: dict[str, Path]) -> None:
    kontext = DiffusionPipeline.from_pretrained(tiny_diffusion["tiny-flux-kontext"])
    sd3 = DiffusionPipeline.from_pretrained(tiny_diffusion["tiny-sd3"])
    assert isinstance(kontext, FluxKontextPipeline)
    assert isinstance(sd3, StableDiffusion3Pipeline)
    assert kontext.vae_scale_factor == 8 and sd3.vae_scale_factor == 8
    assert kontext.transformer.config.guidance_embeds


def test_model_ref_and_revision(tiny_diffusion: dict[str, Path], editor: DiffusionBackend) -> None:
    path = str(tiny_diffusion["tiny-flux-kontext"])
    assert editor.model == ModelRef(model_id=path, revision=editor.model.revision)
    assert editor.model.backend == "diffusers"
    assert len(editor.model.revision) == 16
    assert editor.model.revision == folder_digest(Path(path))
    # A local folder has no branches: a branch name does not change what is loaded or recorded.
    assert DiffusionBackend(path, revision="v1").model.revision == editor.model.revision
    assert editor.task == "edit"


def test_edit_size_and_determinism(editor: DiffusionBackend, source: Image.Image) -> None:
    args = {"instruction": "make the sky red", "steps": STEPS, "guidance": 2.5, "size": SIZE}
    first = editor.edit(source, seed=1, **args)
    assert first.size == (SIZE, SIZE) and first.mode == "RGB"
    assert np.array_equal(pixels(first), pixels(editor.edit(source, seed=1, **args)))
    assert not np.array_equal(pixels(first), pixels(editor.edit(source, seed=2, **args)))
    # The source conditions the result: another source, same seed, another image.
    flipped = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert not np.array_equal(pixels(first), pixels(editor.edit(flipped, seed=1, **args)))
    assert editor.edit(source, seed=1, **{**args, "size": 32}).size == (32, 32)


def test_generate_size_and_determinism(generator: DiffusionBackend) -> None:
    args = {"prompt": "a red cat", "steps": STEPS, "guidance": 5.0, "size": SIZE}
    first = generator.generate(seed=1, **args)
    assert first.size == (SIZE, SIZE) and first.mode == "RGB"
    assert np.array_equal(pixels(first), pixels(generator.generate(seed=1, **args)))
    assert not np.array_equal(pixels(first), pixels(generator.generate(seed=2, **args)))
    assert generator.task == "text-to-image"


def test_wrong_task_is_a_clear_error(
    editor: DiffusionBackend, generator: DiffusionBackend, source: Image.Image
) -> None:
    with pytest.raises(ValueError, match="text-to-image pipeline"):
        generator.edit(source, "make it red", seed=0, steps=STEPS, guidance=2.5, size=SIZE)
    with pytest.raises(ValueError, match="image-editing pipeline"):
        editor.generate("a red cat", seed=0, steps=STEPS, guidance=2.5, size=SIZE)
    with pytest.raises(ValueError, match="multiple of 16"):
        generator.generate("a red cat", seed=0, steps=STEPS, guidance=2.5, size=50)
