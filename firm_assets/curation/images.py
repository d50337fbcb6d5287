"""Safe ingestion of user- and model-provided images into a content-addressed store.

Images come from users and from editing models. A bad one (corrupt, truncated, exotic
format, oversized, outside the dataset root) must be quarantined with a readable reason and
must never crash a run, so every problem surfaces as `ImageRejected`.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

# Format name as PIL reports it -> (stored format, file extension). MPO is how PIL names
# multi-picture JPEGs straight from cameras; the bytes are ordinary JPEG.
_ALLOWED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("JPEG", "jpg"),
    "MPO": ("JPEG", "jpg"),
    "PNG": ("PNG", "png"),
    "WEBP": ("WEBP", "webp"),
}
# Modes PNG stores as-is; anything else is converted so stored outputs are plain RGB(A)/L(A).
_PNG_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA"})
_PNG_COMPRESS_LEVEL = 6


@dataclass(frozen=True)
class StoredImage:
    """An image that passed validation, stored under its content hash."""

    sha256: str
    path: Path
    format: str
    width: int
    height: int
    bytes: int


class ImageRejected(Exception):
    """An image that must be quarantined; `reason` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def resolve_under(root: Path, relative: str) -> Path:
    """Resolve a user-given path inside `root`, refusing anything that could read elsewhere."""
    if not relative or "\x00" in relative:
        raise ImageRejected(f"invalid image path {relative!r}")
    if PurePosixPath(relative).is_absolute():
        raise ImageRejected(f"absolute image path not allowed: {relative!r}")
    real_root = root.resolve()
    if not _is_within(Path(os.path.normpath(real_root / relative)), real_root):
        raise ImageRejected(f"image path escapes the dataset root: {relative!r}")
    resolved = (real_root / relative).resolve()
    if not _is_within(resolved, real_root):
        raise ImageRejected(f"image path is a symlink pointing outside the dataset root: {relative!r}")
    if not resolved.exists():
        raise ImageRejected(f"missing file: {relative!r}")
    if not resolved.is_file():
        raise ImageRejected(f"not a regular file: {relative!r}")
    return resolved


def _is_within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def ingest_image(path: Path, store: Path, max_pixels: int = 40_000_000) -> StoredImage:
    """Validate an image file and copy its original bytes into the content-addressed store."""
    data = _read_bytes(path)
    sha = hashlib.sha256(data).hexdigest()
    fmt, ext, width, height = _validate(data, max_pixels)
    dest = _store_bytes(data, store, sha, ext)
    return StoredImage(sha256=sha, path=dest, format=fmt, width=width, height=height, bytes=len(data))


def save_generated(image: Image.Image, store: Path) -> StoredImage:
    """Store a model-produced image as a metadata-free PNG, so equal pixels give equal hashes."""
    data = _encode_png(image)
    sha = hashlib.sha256(data).hexdigest()
    dest = _store_bytes(data, store, sha, "png")
    width, height = image.size
    return StoredImage(sha256=sha, path=dest, format="PNG", width=width, height=height, bytes=len(data))


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageRejected(f"missing file: {path}") from None
    except OSError as exc:
        raise ImageRejected(f"cannot read file {path}: {exc.strerror or exc}") from None
    if not data:
        raise ImageRejected("empty file")
    return data


def _validate(data: bytes, max_pixels: int) -> tuple[str, str, int, int]:
    """Check format and header size first, then fully decode; returns (format, ext, w, h)."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; treat it as a rejection.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(data, max_pixels)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected("not a recognised image (corrupt bytes or unknown format)") from None
    # Decoders raise many exception types on hostile input; any of them means a bad image.
    except Exception as exc:
        raise ImageRejected(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None


def _decode(data: bytes, max_pixels: int) -> tuple[str, str, int, int]:
    with Image.open(io.BytesIO(data)) as header:
        fmt_name, (width, height) = header.format or "unknown", header.size
        if fmt_name not in _ALLOWED_FORMATS:
            raise ImageRejected(f"unsupported format {fmt_name}")
        if width <= 0 or height <= 0:
            raise ImageRejected(f"invalid image size {width} x {height}")
        if width * height > max_pixels:
            raise ImageRejected(f"image too large: {width} x {height} = {width * height} px > {max_pixels}")
        header.verify()
    # verify() leaves the image unusable and misses truncated pixel data; a full load catches it.
    with Image.open(io.BytesIO(data)) as full:
        full.load()
    fmt, ext = _ALLOWED_FORMATS[fmt_name]
    return fmt, ext, width, height


def _encode_png(image: Image.Image) -> bytes:
    """Encode without any metadata chunks (no text, time, ICC, EXIF) for reproducible bytes."""
    if image.mode in _PNG_MODES and "transparency" not in image.info:
        clean = image.copy()
    else:
        # Palette/transparency live in `info`, which is dropped below: bake them into pixels.
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        clean = image.convert("RGBA" if has_alpha else "RGB")
    clean.info = {}
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _store_bytes(data: bytes, store: Path, sha: str, ext: str) -> Path:
    """Write `store/<sha[:2]>/<sha>.<ext>` atomically; an existing file is already correct."""
    dest = store / sha[:2] / f"{sha}.{ext}"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{sha[:8]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest
