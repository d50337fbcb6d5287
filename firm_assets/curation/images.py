"""Safe ingestion of user- and model-provided images into a content-addressed store.

Images come from users and from editing models. A bad one (corrupt, truncated, exotic
format, oversized, degenerate, outside the dataset root) must be quarantined with a readable
reason and must never crash a run, so every problem surfaces as `ImageRejected`.

What a model sees must be what a person sees. Every consumer opens a stored image with PIL and
converts it to RGB, which ignores EXIF orientation, clips 16-bit samples, drops alpha without
compositing and silently takes the first frame. So an image is stored byte for byte only when
that conversion is already faithful (8-bit RGB or grey, one frame, no rotation, every pixel
opaque); any other accepted image is stored as the PNG of what a viewer shows: EXIF
orientation applied, wide samples scaled (not clipped) to 8 bits, transparency composited on
`BACKGROUND`, the first frame of an animation; its `note` says which of these happened.
GIF is accepted on those terms (first frame); BMP, TIFF and other formats are refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from resources.processes import process_alive

# Format name as PIL reports it -> (stored format, file extension). MPO is how PIL names
# multi-picture JPEGs straight from cameras; the bytes are ordinary JPEG.
_ALLOWED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("JPEG", "jpg"),
    "MPO": ("JPEG", "jpg"),
    "PNG": ("PNG", "png"),
    "WEBP": ("WEBP", "webp"),
    "GIF": ("GIF", "gif"),
}
# Refused before the file is read whole: no accepted image of at most MAX_PIXELS needs more.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 40_000_000
# Degenerate shapes carry nothing a judge can assess and break VLM preprocessors (Qwen-VL
# refuses extreme aspect ratios); such an image is quarantined, not resized.
MIN_SIDE = 16
MAX_ASPECT_RATIO = 20.0
# Transparency is shown on white, as a browser or document viewer shows it on a page.
BACKGROUND = (255, 255, 255)
# Samples wider than 8 bits reach PIL as these modes; accepted formats store at most 16 bits.
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_WIDE_MAX = 65535
# Pixel modes that PIL's convert("RGB") shows faithfully when every pixel is opaque.
_FAITHFUL_MODES = frozenset({"RGB", "L", "RGBA", "LA"})
# A store temp file whose writer died (kill -9) is removed; so is any older than this, since a
# write takes milliseconds and the writer may live on another machine sharing the store.
STALE_TEMP_S = 3600
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
    note: str = ""  # what normalization changed; empty when the original bytes were kept


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


def ingest_image(
    path: Path, store: Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES
) -> StoredImage:
    """Validate an image file and store it: its original bytes when a plain RGB conversion shows it
    faithfully, else the PNG of what a viewer shows (see the module docstring)."""
    return ingest_bytes(_read_bytes(path, max_bytes), store, max_pixels, max_bytes)


def ingest_bytes(
    data: bytes, store: Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES
) -> StoredImage:
    """`ingest_image` of bytes already read (an image held inside a data file, e.g. a Parquet
    `Image` struct)."""
    if not data:
        raise ImageRejected("empty file")
    if len(data) > max_bytes:
        raise ImageRejected(f"file too large: {len(data)} bytes > {max_bytes}")
    fmt, ext, width, height, shown = _validate(data, max_pixels)
    if shown is None:
        sha = hashlib.sha256(data).hexdigest()
        dest = _store_bytes(data, store, sha, ext)
        return StoredImage(sha256=sha, path=dest, format=fmt, width=width, height=height, bytes=len(data))
    image, notes = shown
    stored = save_generated(image, store)
    return replace(stored, note=f"from {fmt}: " + "; ".join(notes))


def save_generated(image: Image.Image, store: Path) -> StoredImage:
    """Store a model-produced image as a metadata-free PNG, so equal pixels give equal hashes."""
    data = _encode_png(image)
    sha = hashlib.sha256(data).hexdigest()
    dest = _store_bytes(data, store, sha, "png")
    width, height = image.size
    return StoredImage(sha256=sha, path=dest, format="PNG", width=width, height=height, bytes=len(data))


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    """Read a regular file of at most `max_bytes`, checked on the open descriptor before reading;
    O_NONBLOCK keeps a FIFO or device from blocking the open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageRejected(f"missing file: {path}") from None
    except OSError as exc:
        raise ImageRejected(f"cannot read file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRejected(f"not a regular file: {path}")
        if info.st_size > max_bytes:
            raise ImageRejected(f"file too large: {info.st_size} bytes > {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageRejected(f"cannot read file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageRejected(f"file too large: grew past {max_bytes} bytes while being read")
    return data


Shown = tuple[Image.Image, list[str]]


def _validate(data: bytes, max_pixels: int) -> tuple[str, str, int, int, Shown | None]:
    """Check format and header size first, then fully decode; returns the file's (format, ext,
    width, height) and `shown`: the normalized image and notes, or None to store the bytes as is."""
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


def _decode(data: bytes, max_pixels: int) -> tuple[str, str, int, int, Shown | None]:
    with Image.open(io.BytesIO(data)) as header:
        fmt_name, (width, height) = header.format or "unknown", header.size
        if fmt_name not in _ALLOWED_FORMATS:
            raise ImageRejected(f"unsupported format {fmt_name}")
        check_size(width, height, max_pixels)
        header.verify()
    # verify() leaves the image unusable and misses truncated pixel data; a full load catches it.
    with Image.open(io.BytesIO(data)) as full:
        full.load()
        shown = as_shown(full)
    fmt, ext = _ALLOWED_FORMATS[fmt_name]
    return fmt, ext, width, height, shown


def check_size(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse empty, too large and degenerate (tiny side, extreme aspect ratio) sizes."""
    if width <= 0 or height <= 0:
        raise ImageRejected(f"invalid image size {width} x {height}")
    if width * height > max_pixels:
        raise ImageRejected(f"image too large: {width} x {height} = {width * height} px > {max_pixels}")
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(f"degenerate image: {width} x {height} has a side under {MIN_SIDE} px")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageRejected(
            f"degenerate image: {width} x {height} has aspect ratio {ratio:.1f} > {MAX_ASPECT_RATIO:g}"
        )


def as_shown(image: Image.Image) -> Shown | None:
    """The 8-bit RGB image a viewer shows for the loaded (first) frame, with notes on what changed;
    None when `image.convert("RGB")` of the file as stored is already that."""
    frames = getattr(image, "n_frames", 1)
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    rotated = orientation in range(2, 9)
    transparent = image.has_transparency_data and image.convert("RGBA").getchannel("A").getextrema()[0] < 255
    if frames == 1 and not rotated and not transparent and image.mode in _FAITHFUL_MODES:
        return None
    notes = [f"first of {frames} frames"] if frames > 1 else []
    if rotated:
        image = ImageOps.exif_transpose(image)
        notes.append(f"EXIF orientation {orientation} applied")
    if image.mode in _WIDE_MODES:
        notes.append(f"{image.mode} samples scaled to 8 bits")
        image = scale_to_8bit(image)
    if transparent:
        notes.append(f"{image.mode} transparency composited on {BACKGROUND}")
        image = composite_on_background(image)
    elif image.mode != "RGB":
        notes.append(f"{image.mode} converted to RGB")
        image = image.convert("RGB")
    return image, notes


def scale_to_8bit(image: Image.Image) -> Image.Image:
    """Map 16-bit samples (0..65535) linearly onto 0..255, rounding: 65535 -> 255, 32768 -> 128.
    PIL's own conversion clips instead, turning every sample above 255 white."""
    samples = np.asarray(image, dtype=np.float64)
    if not np.isfinite(samples).all():
        raise ImageRejected(f"{image.mode} image has non-finite samples")
    low, high = samples.min(), samples.max()
    if low < 0 or high > _WIDE_MAX:
        raise ImageRejected(f"{image.mode} samples {low:g}..{high:g} outside 0..{_WIDE_MAX}")
    return Image.fromarray(np.rint(samples * (255 / _WIDE_MAX)).astype(np.uint8), mode="L")


def composite_on_background(image: Image.Image) -> Image.Image:
    """Alpha-composite over `BACKGROUND`: RGBA (255, 0, 0, 0) becomes white, not red."""
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")


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
    """Write `store/<sha[:2]>/<sha>.<ext>` atomically; an existing file is already correct.

    The bytes go to a temp file named after this process, renamed into place; on any error it is
    removed, and one left by a killed writer is swept when a process first writes to the store.
    """
    dest = store / sha[:2] / f"{sha}.{ext}"
    if dest.exists():
        return dest
    if store not in _swept:
        sweep_orphans(store)
        _swept.add(store)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{sha[:8]}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


_swept: set[Path] = set()


def sweep_orphans(store: Path) -> list[Path]:
    """Remove temp files whose writer process is gone or that are older than STALE_TEMP_S."""
    removed = []
    now = time.time()
    for temp in store.glob("*/.*.tmp"):
        try:
            writer = int(temp.name.split(".")[2])
            stale = now - temp.stat().st_mtime > STALE_TEMP_S
        except (ValueError, IndexError, FileNotFoundError):
            continue  # not named by this module, or already gone
        if stale or not process_alive(writer):
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed
