"""The LLaMA-Factory ShareGPT export: how records are written, indexed and read back.

Layout of an export root (FIRM_HOME/datasets): `dataset_info.json` at the root lists every published
version's tasks as `<task>@<version>`; a version folder `<dataset>/<version>/` holds one `<task>.json`
per task (a JSON array, one record per line, written as the records are made), `sharegpt.json` (its
own entries of the root index) and `images/`. Record image paths are relative to the root, the folder
of `dataset_info.json`, which is where LLaMA-Factory looks for them (its default `media_dir`):
the edit and gen exports load side by side from one `dataset_dir`.

Placeholders: LLaMA-Factory counts `<image>`, `<video>` and `<audio>` in a record's messages and
refuses a record whose counts differ from its media. A prompt's user text never holds one: the one
rendering of prompts (`prompts.neutral_text`) already made them plain text, the same bytes the bench
and `firm serve` send. Judges' reasoning (the answers) may still contain these words literally, so
every text is escaped as a guard: a backslash is added right after the `<` of any
`<image>`, `<video>` or `<audio>` that has zero or more backslashes there (`<image>` becomes
`<\\image>`, `<\\image>` becomes `<\\\\image>`). LLaMA-Factory leaves the escaped forms alone and
`unescape` removes exactly one backslash again, so the round trip is exact. The project's trainer
reads exports with `read_task`, the same reader the contract tests check.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string
from pathlib import Path

INFO_FILE = "dataset_info.json"
MANIFEST = "sharegpt.json"
IMAGE = "<image>"
WRITE_BUFFER = 1 << 20  # bytes: few large writes for a task file of hundreds of MiB
PLACEHOLDERS = ("<image>", "<video>", "<audio>")
COLUMNS = {"messages": "messages", "images": "images"}
ROLE_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}
_ESCAPABLE = re.compile(r"<(\\*)(image|video|audio)>")
_ESCAPED = re.compile(r"<\\(\\*)(image|video|audio)>")


class ExportContractError(ValueError):
    """A ShareGPT record that LLaMA-Factory (or the project's trainer) would reject or misread."""


def escape(text: str) -> str:
    """Text with no LLaMA-Factory placeholder left in it (reversible with `unescape`)."""
    return _ESCAPABLE.sub(lambda m: f"<\\{m[1]}{m[2]}>", text)


def unescape(text: str) -> str:
    """The text `escape` was given."""
    return _ESCAPED.sub(lambda m: f"<{m[1]}{m[2]}>", text)


def entry_name(task: str, version: str) -> str:
    """The name of a version's task in the root `dataset_info.json` (LLaMA-Factory's `dataset:`)."""
    return f"{task}@{version}"


def image_ref(dataset: str, version: str, file_name: str) -> str:
    """The path a record gives for an image of a version folder, relative to the export root."""
    return f"{dataset}/{version}/images/{file_name}"


class RecordEncoder:
    """Single-turn records that share a system text and an image count, each as the JSON text of one
    line of a task file: `{"messages": [system?, user, assistant], "images": [...]}` with `json.dumps`'
    separators and ASCII escapes. The images' placeholders come first in the user turn, then the
    escaped user text. A task file's records all share the system turn, so it is escaped and encoded
    once here, not once per record, and no per-record dicts are built (740K records per dataset at the
    paper's scale)."""

    def __init__(self, system: str | None, image_count: int) -> None:
        system_turn = f'{{"role": "system", "content": {_json_string(escape(system))}}}, ' if system else ""
        self._head = f'{{"messages": [{system_turn}{{"role": "user", "content": '
        self._image_count = image_count
        self._placeholders = IMAGE * image_count

    def __call__(self, user: str, images: Sequence[str], answer: str) -> str:
        if len(images) != self._image_count:
            raise ValueError(f"{len(images)} images given for records of {self._image_count}")
        return (
            f"{self._head}{_json_string(self._placeholders + escape(user))}}}, "
            f'{{"role": "assistant", "content": {_json_string(escape(answer))}}}], '
            f'"images": [{", ".join(map(_json_string, images))}]}}'
        )


def sharegpt_record(system: str | None, user: str, images: Sequence[str], answer: str) -> str:
    """One single-turn record as the JSON text of its task-file line (layout in `RecordEncoder`)."""
    return RecordEncoder(system, len(images))(user, images, answer)


def write_records(path: Path, records: Iterable[str]) -> int:
    """Write records (each its JSON text) as a JSON array, one record per line, each as it comes:
    memory holds one record however many there are (370K per task at the paper's scale). Returns how
    many were written."""
    count = 0
    with path.open("w", buffering=WRITE_BUFFER) as out:
        out.write("[")
        for record in records:
            out.write(",\n" if count else "\n")
            out.write(record)
            count += 1
        out.write("\n]\n" if count else "]\n")
    return count


def write_tasks(folder: Path, dataset: str, version: str, records: Mapping[str, Iterable[str]]) -> None:
    """Write a version's task files (streamed: `records` may be generators) and its manifest into
    `folder` (which may be a temporary folder renamed to `<root>/<dataset>/<version>` afterwards: the
    paths inside name the final place). Records are JSON texts, as `sharegpt_record` makes them."""
    manifest = {}
    for task, rows in records.items():
        write_records(folder / f"{task}.json", rows)
        manifest[entry_name(task, version)] = {
            "file_name": f"{dataset}/{version}/{task}.json",
            "formatting": "sharegpt",
            "columns": COLUMNS,
            "tags": ROLE_TAGS,
        }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def index_exports(root: Path) -> Path:
    """Rebuild the root `dataset_info.json` from every version's manifest. Runs under an exclusive
    lock on the root folder and replaces the file atomically, so concurrent publishers never lose an
    entry and a reader never sees half a file."""
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        info = {}
        for manifest in sorted(root.glob(f"*/*/{MANIFEST}")):
            info.update(json.loads(manifest.read_text()))
        tmp = root / f".{INFO_FILE}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(info, indent=1))
        os.chmod(tmp, 0o644)
        os.replace(tmp, root / INFO_FILE)
    finally:
        os.close(fd)
    return root / INFO_FILE


@dataclass(frozen=True)
class SftRecord:
    """One training example as written: system text, the user turn as text pieces and image paths
    in order (placeholders resolved, text unescaped), and the answer to learn."""

    system: str | None
    user: tuple[str | Path, ...]
    answer: str


def _user_parts(content: str, images: list[Path]) -> tuple[str | Path, ...]:
    pieces = content.split(IMAGE)
    parts: list[str | Path] = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append(images[i - 1])
        if piece:
            parts.append(unescape(piece))
    return tuple(parts)


def parse_record(record: dict, root: Path) -> SftRecord:
    """Check one record against the contract LLaMA-Factory enforces (roles in order, as many
    `<image>` placeholders as images and no other media placeholder, every image found from the
    export root) and return it as the trainer uses it."""
    messages, paths = record.get("messages"), record.get("images", [])
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ExportContractError("messages is not a list of objects")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ExportContractError("images is not a list of paths")
    roles = [m.get("role") for m in messages]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        raise ExportContractError(f"roles must be [system,] user, assistant; got {roles}")
    contents = [m.get("content") for m in messages]
    if not all(isinstance(c, str) for c in contents):
        raise ExportContractError("a message content is not a string")
    counts = {p: sum(c.count(p) for c in contents) for p in PLACEHOLDERS}
    expected = {p: len(paths) if p == IMAGE else 0 for p in PLACEHOLDERS}
    if counts != expected or contents[-2].count(IMAGE) != len(paths):
        raise ExportContractError(f"placeholders {counts} in messages, expected {expected} in the user turn")
    images = []
    for path in paths:
        resolved = root / path
        if Path(path).is_absolute() or not resolved.is_file():
            raise ExportContractError(f"image {path!r} is not a file under the export root {root}")
        images.append(resolved)
    system = unescape(contents[0]) if roles[0] == "system" else None
    return SftRecord(system, _user_parts(contents[-2], images), unescape(contents[-1]))


def entry_path(info_file: Path, entry: str) -> Path:
    """The records file of one `dataset_info.json` entry, once the entry is found to be ShareGPT
    with the project's columns and tags."""
    info = json.loads(info_file.read_text())
    if entry not in info:
        raise ExportContractError(f"{info_file} has no entry {entry!r}")
    spec = info[entry]
    if (spec.get("formatting"), spec.get("columns"), spec.get("tags")) != ("sharegpt", COLUMNS, ROLE_TAGS):
        raise ExportContractError(f"{entry!r} is not a ShareGPT entry with the project's columns and tags")
    return info_file.parent / spec["file_name"]


def read_entry(info_file: Path, entry: str) -> list[SftRecord]:
    """Every record of one `dataset_info.json` entry, checked; the first broken record raises
    `ExportContractError` naming its file and 0-based index (LLaMA-Factory's record order)."""
    path = entry_path(info_file, entry)
    parsed = []
    for index, record in enumerate(json.loads(path.read_text())):
        try:
            parsed.append(parse_record(record, info_file.parent))
        except ExportContractError as error:
            raise ExportContractError(
                f"{path.relative_to(info_file.parent)} record {index}: {error}"
            ) from None
    return parsed


def read_task(version_folder: Path, task: str) -> list[SftRecord]:
    """A published version's task, read through the root `dataset_info.json` as LLaMA-Factory does."""
    root = version_folder.parent.parent
    return read_entry(root / INFO_FILE, entry_name(task, version_folder.name))
