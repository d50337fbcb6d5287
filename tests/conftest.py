"""Shared fixtures: the tiny offline models and the curated demo chains, built once per test session."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from curated import Curated, curate, new_home, point_at, relocate
from dagster import AssetSelection
from PIL import Image

from resources.chat import ImagePart
from resources.tiny_models import TEXT_NAME, build_tiny_models
from resources.transformers_backend import TransformersBackend

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# One torch thread here and in every process the tests start (`firm run`, `dagster dev`, trainers,
# servers), as the cpu-tiny profile runs (`cpu_threads: 1`): the tiny models' operations are too
# small to split across cores, and on a busy machine a second thread waiting on the first made a
# batch of tiny-model calls take 30 s instead of 1 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the clone: present in CI, absent on a user's machine (then skip)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (it sits beside the clone in CI only)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Qwen3-VL and Qwen3 folders, keyed by name."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """Every tiny model (chat and diffusion) in one folder, built once per session."""
    from resources.tiny_diffusion import build_tiny_diffusion

    dest = next(iter(tiny_models.values())).parent
    build_tiny_diffusion(dest)
    return dest


@pytest.fixture
def firm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Path:
    """A fresh FIRM_HOME (warehouse, MLflow store, images) sharing the session's tiny models."""
    home = new_home(tmp_path, tiny_model_dir)
    point_at(home, monkeypatch)
    return home


@pytest.fixture(scope="session")
def curated_edit(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Curated:
    """The demo edit chain curated once per session (its home is never written after; copy it with
    `edit_home`)."""
    return curate(AssetSelection.groups("edit"), tmp_path_factory.mktemp("curated-edit"), tiny_model_dir)


@pytest.fixture(scope="session")
def curated_gen(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Curated:
    """The demo gen chain curated once per session (copy it with `gen_home`)."""
    return curate(AssetSelection.groups("gen"), tmp_path_factory.mktemp("curated-gen"), tiny_model_dir)


@pytest.fixture(scope="session")
def curated_main(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Curated:
    """The whole main job once per session: both chains, both critics trained, their bench and both
    RL policies. The critics, bench and RL tests share it (copy it with `relocate` to write to it)."""
    from jobs.curation import main_job

    return curate(main_job.selection, tmp_path_factory.mktemp("curated-main"), tiny_model_dir)


@pytest.fixture
def edit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, curated_edit: Curated) -> Path:
    """This test's own copy of the session's curated edit home, as its FIRM_HOME."""
    home = relocate(curated_edit.home, tmp_path / "firm-home")
    point_at(home, monkeypatch)
    return home


@pytest.fixture
def gen_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, curated_gen: Curated) -> Path:
    """This test's own copy of the session's curated gen home, as its FIRM_HOME."""
    home = relocate(curated_gen.home, tmp_path / "firm-home")
    point_at(home, monkeypatch)
    return home


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[ImagePart]:
    """Images of different sizes and modes, so backend batches mix grids and conversions."""
    folder = tmp_path_factory.mktemp("images")
    parts = []
    for index, (mode, size, color) in enumerate(
        [("RGB", (64, 64), "red"), ("RGBA", (200, 120), "blue"), ("L", (48, 90), 128)]
    ):
        path = folder / f"{index}.png"
        Image.new(mode, size, color).save(path)
        parts.append(ImagePart(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    return parts


@pytest.fixture(scope="session")
def tiny_text_backend(tiny_models: dict[str, Path]) -> Iterator[TransformersBackend]:
    """The tiny text-only model behind the transformers backend, loaded once for every test that
    only reads from it."""
    backend = TransformersBackend(str(tiny_models[TEXT_NAME]))
    yield backend
    backend.close()
