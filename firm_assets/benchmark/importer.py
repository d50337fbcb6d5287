"""Import FIRM-Bench (items + human labels) for one side, never crashing on content.

A benchmark is only worth its labels: an item whose label is missing, out of range or given
twice with different values would silently bias every metric, so such items are set aside with a
reason (`Quarantined`) or reported (`LabelConflict`) instead of being guessed at. Images are
validated by ingesting them (`firm_assets.curation.images`), which also yields their sha256.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firm_assets.benchmark import fields
from firm_assets.curation.images import ImageRejected, StoredImage, ingest_image, resolve_under
from firm_assets.curation.lines import BadLine, Quarantined, attempt, json_records, path_text, quarantined

ITEMS_FILE = "bench_v1.jsonl"
LABELS_FILE = "result/human_bench_v1.jsonl"
# `edit`/`gen` is this project's layout; the published dataset names its folders differently.
SIDE_DIRS: dict[str, tuple[str, ...]] = {
    "edit": ("edit", "FIRM-Bench-Edit"),
    "gen": ("gen", "FIRM-Bench-Gen"),
}


@dataclass(frozen=True)
class BenchItem:
    """One human-labelled benchmark item; `images` is (source, edited) for edit, (image,) for gen."""

    item_id: str
    side: str
    text: str
    images: tuple[str, ...]
    image_shas: tuple[str, ...]
    category: str
    editor: str | None
    human: dict[str, float]
    item_labels: tuple[tuple[str, str], ...] = ()  # optional (question, yes|no) checklist labels


@dataclass(frozen=True)
class LabelConflict:
    """An item labelled more than once with different values: excluded, since no value is right."""

    item_id: str
    dimension: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class _Parsed:
    """An item line that parsed, kept with its line so a later rejection can quote it."""

    item_id: str
    text: str
    images: tuple[str, ...]
    category: str
    editor: str | None
    locator: str
    raw: bytes


def read_firm_bench(
    root: Path, side: str, *, store: Path | None = None
) -> tuple[list[BenchItem], list[Quarantined], list[LabelConflict]]:
    """Items of `root/<side>/bench_v1.jsonl` joined by id to `root/<side>/result/human_bench_v1.jsonl`.

    With `store`, images are ingested there and items point at the stored copies (stable,
    content-addressed); without it they are validated in a throwaway store and items point at
    the originals. Raises only when the files are missing (a wrong root); a file that exists but
    cannot be read is one quarantine row, and any error in one line or image quarantines that item.
    """
    if side not in SIDE_DIRS:
        raise ValueError(f"side must be one of {sorted(SIDE_DIRS)}, got {side!r}")
    side_dir = _side_dir(root, side)
    items_path, labels_path = side_dir / ITEMS_FILE, side_dir / LABELS_FILE
    if not labels_path.is_file():
        raise FileNotFoundError(f"no human labels at {labels_path} (expected <side>/{LABELS_FILE})")
    bad: list[Quarantined] = []
    parsed = _read_items(items_path, side, bad)
    labels, checklists = _read_labels(labels_path, side, parsed, bad)
    conflicts = _conflicts(labels)
    conflicted = {conflict.item_id for conflict in conflicts}
    items: list[BenchItem] = []
    with _image_store(store) as image_store:
        for entry in parsed.values():
            if entry.item_id in conflicted:
                continue
            if entry.item_id not in labels:
                bad.append(quarantined(items_path, entry.locator, entry.raw, "no valid human label"))
                continue
            ingested = attempt(_ingest, side_dir, entry.images, image_store)
            if isinstance(ingested, BadLine):
                bad.append(quarantined(items_path, entry.locator, entry.raw, ingested.reason))
                continue
            originals, stored = ingested
            items.append(
                BenchItem(
                    item_id=entry.item_id,
                    side=side,
                    text=entry.text,
                    images=tuple(
                        str(path) for path in ([s.path for s in stored] if store is not None else originals)
                    ),
                    image_shas=tuple(s.sha256 for s in stored),
                    category=entry.category,
                    editor=entry.editor,
                    human=labels[entry.item_id][0],
                    item_labels=checklists.get(entry.item_id, ()),
                )
            )
    return items, bad, conflicts


def bench_version(items: Iterable[BenchItem]) -> str:
    """Content hash of everything a score depends on; independent of item order and file location."""
    rows = [
        (
            item.side,
            item.item_id,
            item.text,
            item.image_shas,
            item.category,
            item.editor,
            sorted(item.human.items()),
            *([list(item.item_labels)] if item.item_labels else []),
        )
        for item in sorted(items, key=lambda item: (item.side, item.item_id))
    ]
    canonical = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def _side_dir(root: Path, side: str) -> Path:
    for name in SIDE_DIRS[side]:
        if (root / name / ITEMS_FILE).is_file():
            return root / name
    expected = " or ".join(f"{root / name / ITEMS_FILE}" for name in SIDE_DIRS[side])
    raise FileNotFoundError(
        f"no FIRM-Bench {side} items: expected {expected}, with human labels in <side>/{LABELS_FILE}"
    )


def _ingest(side_dir: Path, images: tuple[str, ...], store: Path) -> tuple[list[Path], list[StoredImage]]:
    """An item's images, resolved inside the side's folder and stored; `BadLine` for the first bad one."""
    try:
        originals = [resolve_under(side_dir, path) for path in images]
        return originals, [ingest_image(path, store) for path in originals]
    except ImageRejected as error:
        raise BadLine(error.reason) from None


def _read_items(path: Path, side: str, bad: list[Quarantined]) -> dict[str, _Parsed]:
    parsed: dict[str, _Parsed] = {}
    for number, line, record in json_records(path, bad):
        locator = f"line {number}"
        entry = attempt(_item, record, side, locator, line)
        if isinstance(entry, _Parsed) and entry.item_id in parsed:
            entry = BadLine(f"duplicate item id {entry.item_id!r} (first on {parsed[entry.item_id].locator})")
        if isinstance(entry, BadLine):
            bad.append(quarantined(path, locator, line, entry.reason))
        else:
            parsed[entry.item_id] = entry
    return parsed


def _item(record: dict[str, Any], side: str, locator: str, line: bytes) -> _Parsed:
    return _Parsed(
        item_id=fields.item_id(record),
        text=fields.required_text(record, fields.TEXT_KEYS, "instruction or prompt"),
        images=_edit_images(record) if side == "edit" else _gen_images(record),
        category=fields.optional_text(record, fields.CATEGORY_KEYS) or "all",
        editor=fields.optional_text(record, fields.EDITOR_KEYS),
        locator=locator,
        raw=line,
    )


def _edit_images(record: dict[str, Any]) -> tuple[str, str]:
    """Named source/edited keys, or a two-entry image list read as [source, edited]."""
    edited = fields.pick(record, fields.EDITED_KEYS)
    if edited is not None:
        source = fields.pick(record, fields.SOURCE_KEYS)
        if source is None:
            raise BadLine(f"missing source image (one of {', '.join(fields.SOURCE_KEYS)})")
        return path_text(source[1], source[0]), path_text(edited[1], edited[0])
    listed = fields.pick(record, fields.IMAGE_LIST_KEYS)
    if listed is not None and isinstance(listed[1], list) and len(listed[1]) == 2:
        return path_text(listed[1][0], listed[0]), path_text(listed[1][1], listed[0])
    raise BadLine(
        f"missing edited image (one of {', '.join(fields.EDITED_KEYS)}, "
        "or a two-entry [source, edited] 'image' list)"
    )


def _gen_images(record: dict[str, Any]) -> tuple[str]:
    found = fields.pick(record, fields.GEN_IMAGE_KEYS)
    if found is None:
        raise BadLine(f"missing image (one of {', '.join(fields.GEN_IMAGE_KEYS)})")
    key, value = found
    if isinstance(value, list):
        if len(value) != 1:
            raise BadLine(f"{key} must hold exactly one image, got {len(value)}")
        value = value[0]
    return (path_text(value, key),)


def _read_labels(
    path: Path, side: str, items: dict[str, _Parsed], bad: list[Quarantined]
) -> tuple[dict[str, list[dict[str, float]]], dict[str, tuple[tuple[str, str], ...]]]:
    """Every valid label line per known item id, in file order (duplicates kept for conflicts), and
    the checklist labels of items that have them (the first line that gives them)."""
    labels: dict[str, list[dict[str, float]]] = {}
    checklists: dict[str, tuple[tuple[str, str], ...]] = {}
    for number, line, record in json_records(path, bad):
        found = attempt(_item_label, record, side, items)
        if isinstance(found, BadLine):
            bad.append(quarantined(path, f"line {number}", line, found.reason))
            continue
        item_id, label, checklist = found
        labels.setdefault(item_id, []).append(label)
        if checklist:
            checklists.setdefault(item_id, checklist)
    return labels, checklists


def _item_label(
    record: dict[str, Any], side: str, items: dict[str, _Parsed]
) -> tuple[str, dict[str, float], tuple[tuple[str, str], ...]]:
    """One label line: its item id, its scores and (gen side, optional) its checklist labels."""
    item_id = fields.item_id(record)
    if item_id not in items:
        raise BadLine(f"label for unknown item id {item_id!r}")
    found = fields.pick(record, fields.CHECKLIST_KEYS) if side == "gen" else None
    checklist = fields.checklist_labels(found[1], found[0]) if found else ()
    return item_id, _label(record, side), checklist


def _label(record: dict[str, Any], side: str) -> dict[str, float]:
    label: dict[str, float] = {}
    for dimension, keys in fields.LABEL_KEYS[side].items():
        found = fields.pick(record, keys)
        if found is None:
            raise BadLine(f"missing {dimension} label (one of {', '.join(keys)})")
        label[dimension] = fields.score(found[1], found[0])
    return label


def _conflicts(labels: dict[str, list[dict[str, float]]]) -> list[LabelConflict]:
    conflicts: list[LabelConflict] = []
    for item_id, given in labels.items():
        for dimension in given[0]:
            values = tuple(dict.fromkeys(label[dimension] for label in given))
            if len(values) > 1:
                conflicts.append(LabelConflict(item_id, dimension, values))
    return conflicts


@contextmanager
def _image_store(store: Path | None) -> Iterator[Path]:
    if store is not None:
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="firm-bench-") as scratch:
        yield Path(scratch)
