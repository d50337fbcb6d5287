"""One identity for a model's weights, for every model kind (chat, critic, diffusion, policy base):
what cache keys, critic versions and lineage rows record, so "unknown" never appears.

- A hub commit (40 hex digits) given as the revision is the identity as it is.
- A local folder: sha256 over its weight files' relative paths and bytes (first 16 hex). Hashing a
  few GB takes seconds, so the digest is kept under FIRM_HOME keyed by the files' paths, sizes and
  mtimes: a reload of an unchanged folder reads no weights.
- A hub id: the commit its revision (default `main`) resolves to, read from the local Hugging Face
  cache (no network, no hashing of tens of GB); when the cache lacks it, the hub is asked once; when
  neither answers, a clear error says how to pin it (a local path or `revision: <commit>`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from resources.home import home_path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
# Files every transformers model or diffusers pipeline has at its root: where the cache is probed.
ROOT_FILES = ("config.json", "model_index.json")
COMMIT = re.compile(r"[0-9a-f]{40}")


def weights_identity(model: str, revision: str | None = None) -> str:
    """The pinned identity of `model` (a local folder or a hub id) at `revision`."""
    if revision and COMMIT.fullmatch(revision):
        return revision
    folder = Path(model)
    if folder.is_dir():
        return folder_digest(folder)
    return hub_commit(model, revision)


def pinned(model: str, revision: str | None = None) -> tuple[str, str | None]:
    """(identity to record, revision to load with): a hub id is loaded at exactly the commit that is
    recorded, so a hub update between pinning and loading cannot slip other weights in; a local
    folder has no revisions and loads itself."""
    identity = weights_identity(model, revision)
    return identity, None if Path(model).is_dir() else identity


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def folder_digest(folder: Path) -> str:
    """sha256 (first 16 hex) over the weight files' relative paths and bytes, memoised by their stats."""
    files = _weight_files(folder)
    if not files:
        raise ValueError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {folder}")
    stats = hashlib.sha256()
    for path in files:
        info = path.stat()
        stats.update(f"{path.resolve()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    memo = home_path("cache", "weights", stats.hexdigest()[:32])
    if memo.exists():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    identity = digest.hexdigest()[:16]
    memo.write_text(identity)
    return identity


def hub_commit(repo_id: str, revision: str | None = None) -> str:
    """The commit a hub id's revision points to: the local cache first, then the hub."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    for name in ROOT_FILES:
        cached = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(cached, str):
            # <cache>/models--org--name/snapshots/<commit>/<file>
            return Path(cached).parent.name
    try:
        return HfApi().model_info(repo_id, revision=revision).sha
    except Exception as error:  # offline, DNS, HTTP or auth: the hub's client raises each its own way
        raise ValueError(
            f"cannot pin {repo_id!r} (revision {revision or 'main'}): it is not in the local Hugging Face "
            f"cache and the hub did not answer ({type(error).__name__}). Download it first, or give a "
            "local folder, or set the profile's `revision` to a 40-hex commit."
        ) from error
