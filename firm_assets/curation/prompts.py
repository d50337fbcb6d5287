"""Prompt templates are versioned data files (templates/*.yaml); this module loads and renders them.

A template's id and version enter every cache key and the code_version of the asset that uses it,
so editing a template (and bumping its version) recomputes exactly the stages that use it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from resources.chat import ChatRequest, ImagePart

TEMPLATE_PACKAGE = "firm_assets.curation.templates"
TEMPLATE_DIR_ENV = "FIRM_TEMPLATE_DIR"
MISSING_VALUE = "none"
_MEDIA_PLACEHOLDER = re.compile(r"<(\\*)(image|video|audio)>")


def neutral_text(value: str | None) -> str:
    """A value as every prompt shows it: MISSING_VALUE when absent or blank, and never a media
    placeholder. LLaMA-Factory reads "<image>" anywhere in a message as an image slot: it counts them
    against the record's images (`BasePlugin._validate_messages`) and replaces each with vision tokens
    (`Qwen2VLPlugin.process_messages`), both in src/llamafactory/data/mm_plugin.py, the placeholder
    being `IMAGE_PLACEHOLDER = "<image>"` of src/llamafactory/extras/constants.py (likewise "<video>",
    "<audio>"; hiyouga/LLaMA-Factory at ff6d4d12). So a literal "<image>" in an instruction must not
    reach an export, and escaping it only there (`sharegpt.escape`) trained the critic on other text
    than it was served. Here, where every prompt is rendered, "<image>" (and any escaped form
    "<\\image>") gets a space after "<": "< image>" is the same bytes in the training export, at the
    bench and in `firm serve`, and no reader changes it."""
    if value is None or not value.strip():
        return MISSING_VALUE
    return _MEDIA_PLACEHOLDER.sub(r"< \1\2>", value)


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

    def user_text(self, variables: Mapping[str, str | None]) -> str:
        """The user turn's text with its placeholders filled by `neutral_text` of each value (what
        `render` puts after the images): the one rendering of a prompt's text, used by the training
        export (`curation.dataset`), the bench (`critics.inference`) and serving (`critics.scoring`)."""
        return self.user.format_map({name: neutral_text(value) for name, value in variables.items()}).strip()

    def render(self, variables: Mapping[str, str | None], images: dict[str, ImagePart]) -> ChatRequest:
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
