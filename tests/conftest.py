"""Shared fixtures: the tiny offline models, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.tiny_models import build_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Qwen3-VL and Qwen3 folders, keyed by name."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))
