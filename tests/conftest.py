"""Shared fixtures: the tiny offline models, built once per test session."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from resources.chat import ImagePart
from resources.tiny_models import build_tiny_models

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
    home = tmp_path / "firm-home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny").symlink_to(tiny_model_dir)
    monkeypatch.setenv("FIRM_HOME", str(home))
    for name in ("FIRM_EDIT_REQUESTS", "FIRM_PROFILE", "FIRM_TEMPLATE_DIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
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
