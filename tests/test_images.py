"""Bad images must be rejected with a reason (never crash); good ones stored by content hash."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from firm_assets.curation.images import (
    MAX_ASPECT_RATIO,
    MIN_SIDE,
    STALE_TEMP_S,
    ImageRejected,
    StoredImage,
    check_size,
    ingest_image,
    resolve_under,
    save_generated,
    scale_to_8bit,
    sweep_orphans,
)


def _image_bytes(fmt: str, size: tuple[int, int] = (64, 48), **save: object) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height`: a cheap stand-in for huge images."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _pixel(stored: StoredImage, xy: tuple[int, int]) -> tuple[int, ...]:
    """A pixel as every consumer reads the stored file: PIL, converted to RGB."""
    with Image.open(stored.path) as image:
        return image.convert("RGB").getpixel(xy)


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> bool:
    """JPEG is lossy: compare channels within a tolerance."""
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def _saved(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _reason(path: Path, store: Path, **kwargs: int) -> str:
    with pytest.raises(ImageRejected) as caught:
        ingest_image(path, store, **kwargs)
    return caught.value.reason


@pytest.mark.parametrize(("fmt", "ext"), [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
def test_valid_image_is_stored_by_content_hash(tmp_path: Path, fmt: str, ext: str) -> None:
    data = _image_bytes(fmt)
    stored = ingest_image(_write(tmp_path / f"in.{ext}", data), tmp_path / "store")
    sha = hashlib.sha256(data).hexdigest()
    assert (stored.sha256, stored.format, stored.width, stored.height, stored.bytes) == (
        sha,
        fmt,
        64,
        48,
        len(data),
    )
    assert stored.path == tmp_path / "store" / sha[:2] / f"{sha}.{ext}"
    assert stored.path.read_bytes() == data


def test_ingesting_twice_is_idempotent(tmp_path: Path) -> None:
    source = _write(tmp_path / "a.png", _image_bytes("PNG"))
    first = ingest_image(source, tmp_path / "store")
    mtime = first.path.stat().st_mtime_ns
    assert ingest_image(source, tmp_path / "store") == first
    assert first.path.stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()] == [first.path.name]


def test_multi_picture_jpeg_is_stored_as_its_first_picture(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    first = Image.new("RGB", (32, 32), "red")
    first.save(buffer, format="MPO", save_all=True, append_images=[Image.new("RGB", (32, 32), "blue")])
    stored = ingest_image(_write(tmp_path / "camera.jpg", buffer.getvalue()), tmp_path / "store")
    assert (stored.format, stored.path.suffix, stored.note) == ("PNG", ".png", "from JPEG: first of 2 frames")
    assert _close(_pixel(stored, (16, 16)), (255, 0, 0), 3)


def test_random_bytes_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "noise.png", b"definitely not an image " * 200)
    assert "not a recognised image" in _reason(path, tmp_path / "store")


def test_corrupt_png_is_rejected(tmp_path: Path) -> None:
    data = bytearray(_image_bytes("PNG"))
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 40] = b"\xff" * 32
    assert "corrupt" in _reason(_write(tmp_path / "bad.png", bytes(data)), tmp_path / "store")


def test_truncated_jpeg_is_rejected(tmp_path: Path) -> None:
    data = _image_bytes("JPEG", (256, 256), quality=95)
    path = _write(tmp_path / "cut.jpg", data[: len(data) // 2])
    assert "truncated" in _reason(path, tmp_path / "store")


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    assert _reason(_write(tmp_path / "empty.png", b""), tmp_path / "store") == "empty file"


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_unsupported_format_is_rejected(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / f"x.{fmt.lower()}", _image_bytes(fmt))
    assert _reason(path, tmp_path / "store") == f"unsupported format {fmt}"


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    assert "missing file" in _reason(tmp_path / "nope.png", tmp_path / "store")


def test_oversized_image_is_rejected_from_its_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "huge.png", _png_header_only(7100, 7100))
    reason = _reason(path, tmp_path / "store")
    assert reason == "image too large: 7100 x 7100 = 50410000 px > 40000000"


def test_decompression_bomb_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "bomb.png", _png_header_only(100_000, 100_000))
    assert path.stat().st_size < 2000
    assert "decompression bomb" in _reason(path, tmp_path / "store", max_pixels=10**12)


def test_pil_bomb_warning_becomes_a_rejection_without_touching_globals(tmp_path: Path) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None
    side = int((limit * 1.5) ** 0.5)  # between PIL's warning and error thresholds
    path = _write(tmp_path / "big.png", _png_header_only(side, side))
    assert "decompression bomb" in _reason(path, tmp_path / "store", max_pixels=10**12)
    assert limit == Image.MAX_IMAGE_PIXELS


def test_a_batch_continues_past_bad_images(tmp_path: Path) -> None:
    files = {
        "good1.png": _image_bytes("PNG"),
        "noise.png": b"\x00\x01 garbage" * 50,
        "still.gif": _image_bytes("GIF"),
        "good2.webp": _image_bytes("WEBP"),
        "huge.png": _png_header_only(8000, 8000),
        "sliver.png": _image_bytes("PNG", (640, 8)),
        "page.bmp": _image_bytes("BMP"),
    }
    stored, rejected = [], {}
    for name, data in files.items():
        try:
            stored.append(ingest_image(_write(tmp_path / "in" / name, data), tmp_path / "store"))
        except ImageRejected as exc:
            rejected[name] = exc.reason
    assert [(s.format, s.note) for s in stored] == [
        ("PNG", ""),
        ("PNG", "from GIF: P converted to RGB"),
        ("WEBP", ""),
    ]
    assert sorted(rejected) == ["huge.png", "noise.png", "page.bmp", "sliver.png"]


def test_real_edit_pairs_ingest(tmp_path: Path, shared_data: Path) -> None:
    files = sorted((shared_data / "edit_pairs").iterdir())
    assert files
    notes = {}
    for path in files:
        stored = ingest_image(path, tmp_path / "store")
        data = path.read_bytes()
        with Image.open(path) as image:
            assert (stored.width, stored.height) == image.size
        if stored.note:
            notes[path.name] = stored.note
            continue
        assert stored.format == {".jpg": "JPEG", ".webp": "WEBP"}[path.suffix]
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        assert stored.path.suffix == path.suffix
        assert stored.path.read_bytes() == data
    # One real edited image is a cut-out: 70% of its pixels are transparent over dark grey, which a
    # plain RGB conversion would show the model; it is stored composited on white instead.
    assert notes == {"2-2.webp": "from WEBP: RGBA transparency composited on (255, 255, 255)"}


# --- resolve_under -----------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    _write(root / "images" / "a.png", _image_bytes("PNG"))
    _write(tmp_path / "outside.png", _image_bytes("PNG"))
    return root


def _resolve_reason(root: Path, relative: str) -> str:
    with pytest.raises(ImageRejected) as caught:
        resolve_under(root, relative)
    return caught.value.reason


def test_resolve_under_accepts_paths_inside_root(root: Path) -> None:
    assert resolve_under(root, "images/a.png") == (root / "images" / "a.png").resolve()
    assert resolve_under(root, "images/../images/./a.png") == (root / "images" / "a.png").resolve()


def test_resolve_under_rejects_parent_escape(root: Path) -> None:
    assert "escapes the dataset root" in _resolve_reason(root, "../outside.png")
    assert "escapes the dataset root" in _resolve_reason(root, "images/../../outside.png")


def test_resolve_under_rejects_absolute_paths(root: Path) -> None:
    absolute = str(root / "images" / "a.png")
    assert "absolute image path" in _resolve_reason(root, absolute)


def test_resolve_under_rejects_symlink_out_of_root(root: Path, tmp_path: Path) -> None:
    (root / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    (root / "linkdir").symlink_to(tmp_path)
    assert "symlink pointing outside" in _resolve_reason(root, "images/link.png")
    assert "symlink pointing outside" in _resolve_reason(root, "linkdir/outside.png")


def test_resolve_under_allows_symlink_within_root(root: Path) -> None:
    (root / "alias.png").symlink_to(root / "images" / "a.png")
    assert resolve_under(root, "alias.png") == (root / "images" / "a.png").resolve()


@pytest.mark.parametrize(
    ("relative", "expected"), [("images/none.png", "missing file"), ("images", "not a regular")]
)
def test_resolve_under_rejects_missing_and_non_files(root: Path, relative: str, expected: str) -> None:
    assert expected in _resolve_reason(root, relative)


@pytest.mark.parametrize("relative", ["", "a\x00.png"])
def test_resolve_under_rejects_invalid_paths(root: Path, relative: str) -> None:
    assert "invalid image path" in _resolve_reason(root, relative)


def test_resolve_under_then_ingest_a_copy_of_real_data(tmp_path: Path, shared_data: Path) -> None:
    shutil.copytree(shared_data / "edit_pairs", tmp_path / "ds" / "images")
    stored = ingest_image(resolve_under(tmp_path / "ds", "images/0-1.webp"), tmp_path / "store")
    assert stored.format == "WEBP"


# --- save_generated ----------------------------------------------------------------------------


def test_save_generated_is_deterministic_and_metadata_free(tmp_path: Path) -> None:
    image = Image.linear_gradient("L").convert("RGB")
    tagged = image.copy()
    tagged.info.update({"dpi": (300, 300), "comment": b"made by a model", "Software": "x"})
    plain = save_generated(image, tmp_path / "store")
    again = save_generated(tagged, tmp_path / "store")
    assert plain == again
    assert (plain.format, plain.width, plain.height) == ("PNG", 256, 256)
    data = plain.path.read_bytes()
    assert plain.sha256 == hashlib.sha256(data).hexdigest()
    assert plain.path.name == f"{plain.sha256}.png"
    for chunk in (b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs", b"iCCP", b"eXIf"):
        assert chunk not in data


def test_save_generated_keeps_palette_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.info["transparency"] = 0
    stored = save_generated(image, tmp_path / "store")
    with Image.open(stored.path) as back:
        assert back.mode == "RGBA"
        assert back.getpixel((0, 0)) == (255, 0, 0, 0)
    ingested = ingest_image(stored.path, tmp_path / "store2")
    assert ingested.note == "from PNG: RGBA transparency composited on (255, 255, 255)"
    assert _pixel(ingested, (0, 0)) == (255, 255, 255)


# --- what the model sees is what a person sees ----------------------------------------------------


def test_sixteen_bit_samples_are_scaled_not_clipped(tmp_path: Path) -> None:
    samples = np.zeros((16, 16), dtype=np.uint16)
    samples[0, :4] = [0, 32768, 65535, 257]
    image = Image.fromarray(samples)
    assert image.mode == "I;16"
    assert image.convert("RGB").getpixel((1, 0)) == (255, 255, 255)  # what a plain conversion shows
    stored = ingest_image(_write(tmp_path / "deep.png", _saved(image, "PNG")), tmp_path / "store")
    assert stored.note == "from PNG: I;16 samples scaled to 8 bits; L converted to RGB"
    assert [_pixel(stored, (x, 0)) for x in range(4)] == [(0,) * 3, (128,) * 3, (255,) * 3, (1,) * 3]


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I", [0, 65535, 32768, 128], [0, 255, 128, 0]),  # 128 * 255 / 65535 = 0.498 -> 0
        ("F", [0.0, 65535.0, 257.0, 32767.0], [0, 255, 1, 127]),  # 32767 -> 127.498 -> 127
    ],
)
def test_scale_to_8bit_hand_checked(mode: str, values: list[float], expected: list[int]) -> None:
    image = Image.new(mode, (4, 1))
    image.putdata(values)
    scaled = scale_to_8bit(image)
    assert (scaled.mode, list(scaled.getdata())) == ("L", expected)


@pytest.mark.parametrize(("mode", "value"), [("I", -1), ("I", 70000), ("F", float("nan"))])
def test_scale_to_8bit_refuses_samples_outside_the_16bit_range(mode: str, value: float) -> None:
    image = Image.new(mode, (2, 1))
    image.putdata([0, value])
    with pytest.raises(ImageRejected, match=f"{mode} "):
        scale_to_8bit(image)


def test_exif_orientation_is_applied_before_the_size_is_recorded(tmp_path: Path) -> None:
    raw = Image.new("RGB", (64, 32), "red")
    raw.paste((0, 0, 255), (32, 0, 64, 32))  # left half red, right half blue, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the stored pixels rotated 90 degrees clockwise
    data = _saved(raw, "JPEG", exif=exif.tobytes(), quality=95)
    stored = ingest_image(_write(tmp_path / "phone.jpg", data), tmp_path / "store")
    assert (stored.width, stored.height, stored.format) == (32, 64, "PNG")
    assert stored.note == "from JPEG: EXIF orientation 6 applied"
    assert _close(_pixel(stored, (16, 8)), (255, 0, 0), 8)  # the left half is now on top
    assert _close(_pixel(stored, (16, 56)), (0, 0, 255), 8)
    with Image.open(stored.path) as back:
        assert back.getexif().get(0x0112) is None  # no second rotation by a viewer


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (32, 16), (255, 0, 0, 0))
    image.paste((255, 0, 0, 128), (16, 0, 32, 16))
    stored = ingest_image(_write(tmp_path / "cutout.png", _saved(image, "PNG")), tmp_path / "store")
    assert stored.note == "from PNG: RGBA transparency composited on (255, 255, 255)"
    assert _pixel(stored, (0, 0)) == (255, 255, 255)  # invisible red is white, as a viewer shows it
    # 255 * 128/255 + 255 * 127/255 = 255 for red; 0 * 128/255 + 255 * 127/255 = 127 for green, blue
    assert _pixel(stored, (20, 0)) == (255, 127, 127)


def test_opaque_alpha_keeps_the_original_bytes(tmp_path: Path) -> None:
    data = _saved(Image.new("RGBA", (32, 32), (10, 20, 30, 255)), "PNG")
    stored = ingest_image(_write(tmp_path / "opaque.png", data), tmp_path / "store")
    assert (stored.note, stored.sha256) == ("", hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    ("make", "fmt", "note", "pixel"),
    [
        (lambda: Image.new("LA", (16, 16), (0, 0)), "PNG", "LA transparency composited", (255, 255, 255)),
        (lambda: Image.new("LA", (16, 16), (40, 255)), "PNG", None, (40, 40, 40)),
        (lambda: Image.new("1", (16, 16), 1), "PNG", "1 converted to RGB", (255, 255, 255)),
        (lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", "CMYK converted", (254, 0, 0)),
        (lambda: Image.new("CMYK", (16, 16), (0, 0, 0, 255)), "JPEG", "CMYK converted", (0, 0, 0)),
    ],
)
def test_other_modes_become_8bit_rgb(tmp_path: Path, make, fmt: str, note: str | None, pixel) -> None:
    stored = ingest_image(_write(tmp_path / f"x.{fmt.lower()}", _saved(make(), fmt)), tmp_path / "store")
    if note is None:
        assert stored.note == ""
    else:
        assert note in stored.note
        with Image.open(stored.path) as back:
            assert back.mode == "RGB"
    assert _close(_pixel(stored, (8, 8)), pixel, 2)


def test_palette_transparency_of_a_gif_is_composited(tmp_path: Path) -> None:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 255, 0, 0, 0, 255])
    image.paste(0, (0, 0, 8, 16))
    data = _saved(image, "GIF", transparency=0)
    stored = ingest_image(_write(tmp_path / "logo.gif", data), tmp_path / "store")
    assert stored.note == "from GIF: P transparency composited on (255, 255, 255)"
    assert (_pixel(stored, (2, 2)), _pixel(stored, (12, 2))) == ((255, 255, 255), (0, 0, 255))


@pytest.mark.parametrize(("fmt", "ext"), [("GIF", "gif"), ("WEBP", "webp"), ("PNG", "png")])
def test_animation_is_stored_as_its_first_frame(tmp_path: Path, fmt: str, ext: str) -> None:
    frames = [Image.new("RGB", (24, 24), colour) for colour in ("red", "lime", "blue")]
    data = _saved(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    stored = ingest_image(_write(tmp_path / f"anim.{ext}", data), tmp_path / "store")
    assert stored.note.startswith(f"from {fmt}: first of 3 frames")
    assert (stored.format, stored.width, stored.height) == ("PNG", 24, 24)
    assert _close(_pixel(stored, (12, 12)), (255, 0, 0), 2)


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ((MIN_SIDE - 1, 64), f"has a side under {MIN_SIDE} px"),
        ((64, 1), f"has a side under {MIN_SIDE} px"),
        ((MIN_SIDE * 21, MIN_SIDE), "has aspect ratio 21.0 > 20"),
        ((MIN_SIDE, MIN_SIDE * 25), "has aspect ratio 25.0 > 20"),
    ],
)
def test_degenerate_sizes_are_refused(size: tuple[int, int], reason: str) -> None:
    with pytest.raises(ImageRejected, match="degenerate image") as caught:
        check_size(*size)
    assert reason in caught.value.reason


def test_sizes_at_the_limits_are_accepted(tmp_path: Path) -> None:
    check_size(MIN_SIDE, MIN_SIDE)
    check_size(int(MIN_SIDE * MAX_ASPECT_RATIO), MIN_SIDE)
    sliver = _write(tmp_path / "sliver.png", _image_bytes("PNG", (MIN_SIDE - 1, 64)))
    expected = f"degenerate image: {MIN_SIDE - 1} x 64 has a side under {MIN_SIDE} px"
    assert _reason(sliver, tmp_path / "store") == expected


def test_file_over_the_byte_limit_is_refused_before_reading(tmp_path: Path) -> None:
    small = _write(tmp_path / "ok.png", _image_bytes("PNG"))
    size = small.stat().st_size
    too_large = _reason(small, tmp_path / "store", max_bytes=size - 1)
    assert too_large == f"file too large: {size} bytes > {size - 1}"
    assert ingest_image(small, tmp_path / "store", max_bytes=size).bytes == size
    sparse = tmp_path / "sparse.png"  # 1 TB on paper, no blocks on disk: reading it would never end
    with sparse.open("wb") as handle:
        handle.truncate(10**12)
    assert _reason(sparse, tmp_path / "store") == f"file too large: {10**12} bytes > {64 * 1024 * 1024}"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert "not a regular file" in _reason(fifo, tmp_path / "store")


def test_temp_files_of_dead_writers_are_swept(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shard = store / "ab"
    shard.mkdir(parents=True)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = int(finished.stdout)
    orphan = _write(shard / f".abcdef01.{dead}.x1y2.tmp", b"half an image")  # as a kill -9 leaves it
    in_flight = _write(shard / f".abcdef02.{os.getpid()}.x3y4.tmp", b"being written")
    old = _write(shard / f".abcdef03.{os.getpid()}.x5y6.tmp", b"forgotten")
    os.utime(old, (time.time() - STALE_TEMP_S - 5,) * 2)
    foreign = _write(shard / ".notes.tmp", b"not ours")
    stored = ingest_image(_write(tmp_path / "a.png", _image_bytes("PNG")), store)
    left = sorted(p.name for p in store.rglob("*") if p.is_file())
    assert left == sorted([stored.path.name, in_flight.name, foreign.name])
    assert not orphan.exists() and not old.exists()
    assert sweep_orphans(store) == []
