"""Released training data as a dataset version a critic trains on: a LLaMA-Factory ShareGPT dataset
(JSON, JSON Lines or Parquet files), such as the files FIRM published for its critics, imported with
its own provenance; and the run-config choice of the version a critic trains on.

The record layout is the one LLaMA-Factory documents (github.com/hiyouga/LLaMA-Factory, data/README.md:
"Sharegpt Format", "Multimodal Image Dataset", "OpenAI Format"): the turns in `conversations`
(`from`/`value`, roles `human`/`gpt`: the format's default tags) or in `messages` (`role`/`content`,
roles `user`/`assistant`), a system turn first or a `system` column, and `images`, as many as there
are `<image>` placeholders in the turns. Image paths are resolved under the media folder (LLaMA-Factory's
`media_dir`; here the data file's folder unless one is given); in Parquet an image may instead be a
Hugging Face `Image` struct holding its bytes.

Each file holds one SFT task of the dataset (the user says which). A record the critic trainer cannot
train on (not one user turn then one assistant turn, an image missing or unreadable, images and
placeholders differing in number) is a quarantine row with its reason; the rest of a file that stops
parsing is one row too. A file that cannot be read at all is an error before anything is written.

A version is the hash of the files' content (each file's sha256 with the task it holds) and the
import layout. Its members are one sample per kept record, source `imported:<file name>`, with no
cache keys: no sample, model call or prompt template of this project is behind them. Its params list
the files and their sha256 (`IMPORTED_FILES`), which `firm audit` prints. Images are stored by content
like every other input and linked into the version folder, and the records are written in the
project's export layout (`curation/sharegpt.py`), so the trainer reads an imported version as it
reads a published one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from firm_assets.curation.dataset import (
    known_version,
    link_or_copy,
    move_into_place,
    register_version,
    world_readable,
)
from firm_assets.curation.images import ImageRejected, StoredImage, ingest_bytes, ingest_image, resolve_under
from firm_assets.curation.json_stream import json_values
from firm_assets.curation.lines import BadLine, Quarantined, attempt, quarantined
from firm_assets.curation.records import record_images, record_quarantine
from firm_assets.curation.sharegpt import (
    IMAGE,
    MANIFEST,
    PLACEHOLDERS,
    entry_name,
    image_ref,
    index_exports,
    write_tasks,
)
from firm_assets.curation.versioning import file_digest
from resources.home import firm_home
from warehouse.connection import Warehouse
from warehouse.lineage import IMPORTED_FILES

IMPORT_LAYOUT = 1  # part of every imported version: a change to what an import writes makes new versions
SOURCE_PREFIX = "imported:"
# columns of an imported version's data.parquet that the bench's contamination check reads
IMAGE_SHAS = "image_shas"
USER_TEXT = "user_text"
QUARANTINE_ASSET = "import-dataset"
SUFFIXES = (".json", ".jsonl", ".parquet")
PARQUET_BATCH = 256  # Parquet rows decoded at a time: their image bytes are in memory together
# the version's data.parquet: one row per kept record, written MEMBER_ROWS rows (a row group) at a
# time, so an import holds a group's user texts, not every record's (bench/import_scale.py)
MEMBER_SCHEMA = pl.Schema(
    {
        "sample_id": pl.String,
        "source": pl.String,
        "cache_keys": pl.List(pl.String),
        "task": pl.String,
        "file_sha256": pl.String,
        "record": pl.Int64,
        IMAGE_SHAS: pl.List(pl.String),
        USER_TEXT: pl.String,
    }
)
MEMBER_ROWS = 10_000
# LLaMA-Factory's two documented tag sets, by the column holding the turns:
# (role tag, content tag, user role, assistant role, system role)
TAG_SETS = {
    "conversations": ("from", "value", "human", "gpt", "system"),
    "messages": ("role", "content", "user", "assistant", "system"),
}


@dataclass(frozen=True)
class ReleasedFile:
    """One data file named for import: the SFT task it holds, and its content hash."""

    task: str
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class ReleasedRecord:
    """A record as the trainer takes it: the texts with their placeholders where the file had them,
    and the images in placeholder order (a file or the bytes of an `Image` struct)."""

    system: str | None
    user: str
    answer: str
    images: tuple[Path | bytes, ...]


@dataclass(frozen=True)
class ImportedVersion:
    """The outcome of an import: the version, its folder, records kept per task, what was
    quarantined (empty when the version was imported before), and whether it is new."""

    dataset: str
    version: str
    folder: Path
    records: dict[str, int]
    quarantined: list[Quarantined]
    new: bool


def read_record(raw: object, media_dir: Path) -> ReleasedRecord:
    """One released record checked against what the trainer trains on; `BadLine` with the reason."""
    if not isinstance(raw, dict):
        raise BadLine(f"a record must be an object, not {type(raw).__name__}")
    column = next((name for name in TAG_SETS if raw.get(name) is not None), None)
    if column is None:
        raise BadLine(f"no turns: neither {' nor '.join(TAG_SETS)} is given")
    role_tag, content_tag, user, assistant, system_tag = TAG_SETS[column]
    turns = raw[column]
    if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
        raise BadLine(f"{column} is not a list of objects")
    roles = [turn.get(role_tag) for turn in turns]
    contents = [turn.get(content_tag) for turn in turns]
    if not all(isinstance(content, str) for content in contents):
        raise BadLine("a turn's content is not text")
    system = raw.get("system") or None
    if roles[:1] == [system_tag]:
        system, roles, contents = contents[0], roles[1:], contents[1:]
    if system is not None and not isinstance(system, str):
        raise BadLine("the system prompt is not text")
    if assistant not in roles:
        raise BadLine("no assistant turn")
    if roles != [user, assistant]:
        raise BadLine(f"turns {roles}: only one {user} turn followed by one {assistant} turn is trained on")
    images = raw.get("images") or []
    if not isinstance(images, list):
        raise BadLine("images is not a list")
    counts = {p: sum(text.count(p) for text in (system or "", *contents)) for p in PLACEHOLDERS}
    expected = {p: len(images) if p == IMAGE else 0 for p in PLACEHOLDERS}
    if counts != expected or contents[0].count(IMAGE) != len(images):
        raise BadLine(
            f"{len(images)} images but placeholders {counts} in the turns"
            f" (expected {len(images)} {IMAGE}, all in the {user} turn)"
        )
    return ReleasedRecord(
        system, contents[0], contents[1], tuple(image_source(image, media_dir) for image in images)
    )


def image_source(image: object, media_dir: Path) -> Path | bytes:
    """Where an image of a record is: the bytes of a Hugging Face `Image` struct, else its path
    resolved under `media_dir` (never outside it)."""
    if isinstance(image, dict):
        if image.get("bytes"):
            return image["bytes"]
        image = image.get("path")
    if not isinstance(image, str):
        raise BadLine("an image is neither a path nor an Image struct with bytes")
    try:
        return resolve_under(media_dir, image)
    except ImageRejected as error:
        raise BadLine(f"image {image!r}: {error.reason}") from None


def file_values(path: Path) -> Iterator[object]:
    """The records of a data file in order: Parquet a batch of rows at a time, JSON (an array, or
    JSON Lines) a value at a time."""
    if path.suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(PARQUET_BATCH):
            yield from batch.to_pylist()
    else:
        for _, _, value in json_values(path):
            yield value


def _file_records(path: Path) -> Iterator[tuple[int, object] | Quarantined]:
    """(0-based index, record) for every record; what cannot be parsed ends the file as one
    quarantine row."""
    index = -1
    try:
        for index, value in enumerate(file_values(path)):
            yield index, value
    except Exception as error:  # the file's own syntax: its later records cannot be found
        locator = "file" if index < 0 else f"after record {index}"
        yield quarantined(path, locator, b"", f"unreadable from here on: {type(error).__name__}: {error}")


def _raw_text(raw: object) -> str:
    """A record as JSON for its quarantine row, image bytes as their length."""
    return json.dumps(raw, ensure_ascii=False, default=lambda value: f"<{len(value)} bytes>")[:2000]


def hash_file(task: str, path: Path) -> ReleasedFile:
    """The file with its sha256, read in chunks; ValueError when it cannot be read or its type is
    not one LLaMA-Factory loads and this importer reads."""
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: not a {', '.join(SUFFIXES)} file")
    try:
        digest = file_digest(path)
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror or error}") from None
    return ReleasedFile(task, path.resolve(), digest, path.stat().st_size)


def version_of(dataset: str, files: Sequence[ReleasedFile], media_dir: Path | None) -> str:
    """The hash of an import: the dataset, each file's sha256 with its task, the media folder its
    image paths resolve under (another folder is another import; images changed in place under the
    same folder are not seen), the layout."""
    content = sorted((file.task, file.sha256) for file in files)
    media = str(media_dir.resolve()) if media_dir is not None else None
    text = json.dumps(
        {"dataset": dataset, "files": content, "media_dir": media, "import_layout": IMPORT_LAYOUT}
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Writer:
    """Converts the records of one import into the version folder as the task files are written:
    its members go to `data.parquet` a row group at a time (closed on leaving the `with`); it
    collects the records kept per file, the stored images and the quarantine rows."""

    def __init__(self, dataset: str, version: str, folder: Path, media_dir: Path | None) -> None:
        self.dataset, self.version, self.folder, self.media_dir = dataset, version, folder, media_dir
        self.store = firm_home() / "images"
        self.members: list[dict] = []  # not yet written to data.parquet
        schema = pl.DataFrame(schema=MEMBER_SCHEMA).to_arrow().schema
        self.parquet = pq.ParquetWriter(folder / "data.parquet", schema, compression="zstd")
        self.kept: Counter[str] = Counter()  # by file sha256
        self.images: dict[str, StoredImage] = {}
        self.quarantined: list[Quarantined] = []

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, error: type[BaseException] | None, *_: object) -> None:
        if error is None:
            self._flush()
        self.parquet.close()

    def _flush(self) -> None:
        if self.members:
            self.parquet.write_table(pl.DataFrame(self.members, schema=MEMBER_SCHEMA).to_arrow())
            self.members = []

    def task_records(self, files: Sequence[ReleasedFile]) -> Iterator[str]:
        """The task's records (JSON texts) from its files in order, bad ones quarantined."""
        for file in files:
            for item in _file_records(file.path):
                if isinstance(item, Quarantined):
                    self.quarantined.append(item)
                    continue
                index, raw = item
                converted = attempt(self._convert, raw, file)
                if isinstance(converted, BadLine):
                    self.quarantined.append(
                        quarantined(file.path, f"record {index}", _raw_text(raw), converted.reason)
                    )
                    continue
                text, user, stored = converted
                for image in stored:  # only a kept record's images enter the version
                    if image.sha256 not in self.images:
                        self.images[image.sha256] = image
                        link_or_copy(image.path, self.folder / "images" / image.path.name)
                self.members.append(
                    {
                        "sample_id": hashlib.sha256(f"{file.sha256}:{index}".encode()).hexdigest()[:16],
                        "source": SOURCE_PREFIX + file.path.name,
                        "cache_keys": [],
                        "task": file.task,
                        "file_sha256": file.sha256,
                        "record": index,
                        IMAGE_SHAS: [image.sha256 for image in stored],
                        USER_TEXT: user,
                    }
                )
                self.kept[file.sha256] += 1
                if len(self.members) == MEMBER_ROWS:
                    self._flush()
                yield text

    def _convert(self, raw: object, file: ReleasedFile) -> tuple[str, str, list[StoredImage]]:
        """The record's JSON text in the export layout, its user turn and its stored images."""
        record = read_record(raw, self.media_dir or file.path.parent)
        stored = [self._store(image, position) for position, image in enumerate(record.images)]
        turns = [
            *([{"role": "system", "content": record.system}] if record.system else []),
            {"role": "user", "content": record.user},
            {"role": "assistant", "content": record.answer},
        ]
        images = [image_ref(self.dataset, self.version, image.path.name) for image in stored]
        return json.dumps({"messages": turns, "images": images}), record.user, stored

    def _store(self, image: Path | bytes, position: int) -> StoredImage:
        """The image in the content-addressed store (linked into the version only once its record
        is kept)."""
        try:
            return (
                ingest_bytes(image, self.store)
                if isinstance(image, bytes)
                else ingest_image(image, self.store)
            )
        except ImageRejected as error:
            raise BadLine(f"image {position}: {error.reason}") from None


def import_released(
    dataset: str,
    files: Sequence[tuple[str, Path]],
    tasks: Sequence[str],
    warehouse: Warehouse,
    media_dir: Path | None = None,
) -> ImportedVersion:
    """Import (task, file) pairs of `dataset`, whose SFT tasks are `tasks`, as one dataset version;
    a version imported before is found, not written again. ValueError for a task the dataset does
    not have, a file that cannot be read, the same file given twice, or no record imported."""
    for task, _ in files:
        if task not in tasks:
            raise ValueError(f"{dataset} has no task {task!r}; its tasks: {', '.join(tasks)}")
    hashed = [hash_file(task, Path(path)) for task, path in files]
    shas = [file.sha256 for file in hashed]
    if len(set(shas)) != len(shas):
        raise ValueError("the same file content is given twice")
    version = version_of(dataset, hashed, media_dir)
    root = firm_home() / "datasets"
    folder = root / dataset / version
    if known_version(warehouse, dataset, version) is not None:
        counts = pl.read_parquet(folder / "data.parquet", columns=["task"])["task"].value_counts()
        return ImportedVersion(dataset, version, folder, dict(counts.iter_rows()), [], False)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{version}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    by_task = {
        task: [file for file in hashed if file.task == task] for task in dict.fromkeys(t for t, _ in files)
    }
    with _Writer(dataset, version, tmp, media_dir) as writer:
        write_tasks(
            tmp, dataset, version, {task: writer.task_records(group) for task, group in by_task.items()}
        )
    kept = {task: sum(writer.kept[file.sha256] for file in group) for task, group in by_task.items()}
    empty = [task for task in by_task if not kept[task]]
    if empty:  # a task with no record would train the critic on the other task alone
        shutil.rmtree(tmp)
        raise ValueError(
            f"no record of task {', '.join(empty)} could be imported"
            f" ({len(writer.quarantined)} record(s) quarantined in all): nothing registered"
        )
    record_quarantine(warehouse, QUARANTINE_ASSET, [row.as_row() for row in writer.quarantined], None)
    frame = pl.read_parquet(tmp / "data.parquet", columns=["sample_id", "source", "cache_keys"])
    world_readable(tmp)
    move_into_place(tmp, folder)
    index_exports(root)
    record_images(warehouse, writer.images.values())
    params = {
        "import_layout": IMPORT_LAYOUT,
        IMPORTED_FILES: [
            {
                "task": file.task,
                "path": str(file.path),
                "sha256": file.sha256,
                "bytes": file.size,
                "records": writer.kept[file.sha256],
                "quarantined": sum(q.source == str(file.path) for q in writer.quarantined),
            }
            for file in hashed
        ],
    }
    register_version(warehouse, dataset, version, frame, params, folder, None, None)
    return ImportedVersion(dataset, version, folder, kept, writer.quarantined, True)


def training_frame(
    warehouse: Warehouse, dataset: str, tasks: Sequence[str], chosen: str, upstream: pl.DataFrame
) -> pl.DataFrame:
    """The dataset rows a critic trains on: the upstream asset's, or, when run config names a
    `dataset_version` (a version or a unique prefix of one), that registered version's members,
    which must hold every task the critic trains on."""
    if not chosen:
        return upstream
    found = warehouse.rows(
        "SELECT version, export_path FROM dataset_versions WHERE dataset = ? AND starts_with(version, ?)",
        [dataset, chosen],
    )
    if len(found) != 1:
        raise ValueError(
            f"dataset_version {chosen!r} matches {len(found)} versions of {dataset}, not one"
            " (`firm audit dataset` lists them; `firm import-dataset` imports one)"
        )
    version, folder = found[0]
    manifest = json.loads((Path(folder) / MANIFEST).read_text())
    missing = [task for task in tasks if entry_name(task, version) not in manifest]
    if missing:
        raise ValueError(
            f"{dataset} version {version} holds no {', '.join(missing)} records, and the critic trains"
            f" on {', '.join(tasks)}: import a file for each task into one version"
        )
    members = warehouse.query(
        "SELECT sample_id, source FROM dataset_members WHERE dataset = ? AND version = ? ORDER BY sample_id",
        [dataset, version],
    )
    return members.with_columns(pl.lit(version).alias("dataset_version"))
