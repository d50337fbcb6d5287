"""Bad images must be rejected with a reason (never crash); good ones stored by content hash."""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from firm_assets.curation.images import ImageRejected, ingest_image, resolve_under, save_generated

EDIT_PAIRS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "edit_pairs"


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


def test_multi_picture_jpeg_is_accepted_as_jpeg(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    first = Image.new("RGB", (32, 32), "red")
    first.save(buffer, format="MPO", save_all=True, append_images=[Image.new("RGB", (32, 32), "blue")])
    stored = ingest_image(_write(tmp_path / "camera.jpg", buffer.getvalue()), tmp_path / "store")
    assert (stored.format, stored.path.suffix) == ("JPEG", ".jpg")


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


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
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
        "anim.gif": _image_bytes("GIF"),
        "good2.webp": _image_bytes("WEBP"),
        "huge.png": _png_header_only(8000, 8000),
    }
    stored, rejected = [], {}
    for name, data in files.items():
        try:
            stored.append(ingest_image(_write(tmp_path / "in" / name, data), tmp_path / "store"))
        except ImageRejected as exc:
            rejected[name] = exc.reason
    assert [s.format for s in stored] == ["PNG", "WEBP"]
    assert sorted(rejected) == ["anim.gif", "huge.png", "noise.png"]


def test_real_edit_pairs_ingest(tmp_path: Path) -> None:
    if not EDIT_PAIRS.is_dir():
        pytest.skip(f"{EDIT_PAIRS} not available")
    files = sorted(EDIT_PAIRS.iterdir())
    assert files
    for path in files:
        stored = ingest_image(path, tmp_path / "store")
        data = path.read_bytes()
        with Image.open(path) as image:
            assert (stored.width, stored.height) == image.size
        assert stored.format == {".jpg": "JPEG", ".webp": "WEBP"}[path.suffix]
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        assert stored.path.suffix == path.suffix
        assert stored.path.read_bytes() == data


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


def test_resolve_under_then_ingest_a_copy_of_real_data(tmp_path: Path) -> None:
    if not EDIT_PAIRS.is_dir():
        pytest.skip(f"{EDIT_PAIRS} not available")
    shutil.copytree(EDIT_PAIRS, tmp_path / "ds" / "images")
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
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.info["transparency"] = 0
    stored = save_generated(image, tmp_path / "store")
    with Image.open(stored.path) as back:
        assert back.mode == "RGBA"
        assert back.getpixel((0, 0)) == (255, 0, 0, 0)
    assert ingest_image(stored.path, tmp_path / "store2").sha256 == stored.sha256
