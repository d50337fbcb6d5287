"""Prompt templates are versioned data files (templates/*.yaml); this module loads and renders them.

A template's id and version enter every cache key and the code_version of the asset that uses it,
so editing a template (and bumping its version) recomputes exactly the stages that use it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from resources.chat import ChatRequest, ImagePart

TEMPLATE_PACKAGE = "firm_assets.curation.templates"
TEMPLATE_DIR_ENV = "FIRM_TEMPLATE_DIR"


@dataclass(frozen=True)
class PromptTemplate:
    """A rendered-on-demand chat prompt: system text, user text, and named image slots."""

    id: str
    version: str
    system: str
    user: str
    images: tuple[str, ...]
    text_sha: str

    @property
    def ref(self) -> str:
        """`id@version#sha` — the sha catches an edit made without bumping the version."""
        return f"{self.id}@{self.version}#{self.text_sha[:8]}"

    @property
    def system_text(self) -> str | None:
        """The system turn of every rendering (None when the template has none)."""
        return self.system.strip() or None

    def user_text(self, variables: dict[str, str]) -> str:
        """The user turn's text with its placeholders filled (what `render` puts after the images)."""
        return self.user.format_map(variables).strip()

    def render(self, variables: dict[str, str], images: dict[str, ImagePart]) -> ChatRequest:
        """Fill the text placeholders and put the named images, in template order, before the text."""
        missing = [name for name in self.images if name not in images]
        if missing:
            raise KeyError(f"template {self.id} needs images {missing}")
        parts: tuple[str | ImagePart, ...] = (
            *(images[name] for name in self.images),
            self.user_text(variables),
        )
        return ChatRequest(user=parts, system=self.system_text)


def load_template(template_id: str) -> PromptTemplate:
    """templates/<id>.yaml, or the same file in $FIRM_TEMPLATE_DIR when a user overrides it there."""
    return _load(template_id, os.environ.get(TEMPLATE_DIR_ENV, ""))


@cache
def _load(template_id: str, override_dir: str) -> PromptTemplate:
    override = Path(override_dir) / f"{template_id}.yaml" if override_dir else None
    if override is not None and override.is_file():
        text = override.read_text()
    else:
        text = resources.files(TEMPLATE_PACKAGE).joinpath(f"{template_id}.yaml").read_text()
    data = yaml.safe_load(text)
    if data["id"] != template_id:
        raise ValueError(f"template file {template_id}.yaml declares id {data['id']!r}")
    return PromptTemplate(
        id=data["id"],
        version=str(data["version"]),
        system=data.get("system", ""),
        user=data["user"],
        images=tuple(data.get("images", [])),
        text_sha=hashlib.sha256(text.encode()).hexdigest(),
    )
