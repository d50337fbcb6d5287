"""Publishing a scored dataset version — the one dataset builder both chains use.

A version is its exact membership plus a content hash. Publishing writes, under
FIRM_HOME/datasets/<name>/<version>/: `data.parquet` (each image twice: its path relative to that
folder in the `*_path` column, for tools that want files, and its bytes as a Hugging Face `Image`
feature, so a copied `data.parquet` alone loads with its pictures), a dataset card `README.md`
(features and provenance, ready for `push_to_hub`), one LLaMA-Factory ShareGPT JSON per training task
(layout and escaping in `sharegpt.py`; FIRM_HOME/datasets/dataset_info.json indexes every version),
and the images; all world-readable whatever the umask. Then the membership and lineage rows in the
warehouse and an MLflow run with the dataset digest.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from firm_assets.curation.parsers import format_plan_then_score
from firm_assets.curation.prompts import load_template
from firm_assets.curation.records import record_lineage
from firm_assets.curation.sharegpt import RecordEncoder, image_ref, index_exports, write_tasks
from firm_assets.curation.versioning import frame_version, short_hash
from resources.home import firm_home
from warehouse.connection import Warehouse

# part of every version's params: a change to the files of a version folder makes new versions
EXPORT_LAYOUT = 4  # 3: task files hold one record per line; 4: image bytes and a dataset card
# A Parquet row group holds at most PARQUET_ROWS rows and about PARQUET_GROUP_BYTES of image bytes (the
# first group, PARQUET_FIRST_ROWS rows, measures them; each next one is sized by the one before), so
# memory stays bounded whether the images are 64-pixel thumbnails or megapixel PNGs.
PARQUET_ROWS = 50_000
PARQUET_GROUP_BYTES = 64 * 2**20
PARQUET_FIRST_ROWS = 100
# The Hugging Face `Image` feature's storage: the file's bytes and its (informative) path.
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CARD = "README.md"


@dataclass(frozen=True)
class RowTarget:
    """How a row becomes the assistant's target answer, and which columns that reads (the exporter
    reads only the columns its tasks use)."""

    columns: tuple[str, ...]
    answer: Callable[[dict], str]

    def __call__(self, row: dict) -> str:
        return self.answer(row)


@dataclass(frozen=True)
class SftTask:
    """One supervised task exported from a dataset: which critic prompt, which columns fill it, and
    how a row becomes the assistant's target answer."""

    name: str
    template_id: str
    image_columns: tuple[str, ...]
    variable_columns: dict[str, str]
    target: RowTarget

    @property
    def columns(self) -> list[str]:
        """Every column a record of this task is made from, each once."""
        return list(
            dict.fromkeys([*self.variable_columns.values(), *self.image_columns, *self.target.columns])
        )


def json_score_target(reasoning_column: str, score_column: str) -> RowTarget:
    """`{"reasoning": ..., "score": N}` — the edit critic's answer format."""

    def target(row: dict) -> str:
        return json.dumps({"reasoning": row[reasoning_column] or "", "score": round(row[score_column])})

    return RowTarget((reasoning_column, score_column), target)


def quality_target(scores_column: str, reasoning_column: str) -> RowTarget:
    """`{"score": [aesthetics, technical, structure], "reasoning": ...}` — the quality answer format."""

    def target(row: dict) -> str:
        return json.dumps({"score": list(row[scores_column]), "reasoning": row[reasoning_column] or ""})

    return RowTarget((scores_column, reasoning_column), target)


def plan_then_score_target(verdicts_column: str, reasoning_column: str, score_column: str) -> RowTarget:
    """The generation critic's instruction-following answer: the judge's answered checklist items
    (question | yes/no | evidence), its analysis, then `\\boxed{N}` (layout in `format_plan_then_score`).
    Items the judge skipped are left out: a critic should not learn to skip."""

    def target(row: dict) -> str:
        answered = [v for v in json.loads(row[verdicts_column] or "[]") if v["verdict"] is not None]
        return format_plan_then_score(answered, row[reasoning_column] or "", round(row[score_column]))

    return RowTarget((verdicts_column, reasoning_column, score_column), target)


@dataclass(frozen=True)
class PublishedDataset:
    """A dataset written to disk and registered, as critic training reads it."""

    name: str
    version: str
    folder: Path
    n_samples: int


def balance_by_bin(frame: pl.DataFrame, column: str, max_per_bin: int | None, seed: int) -> pl.DataFrame:
    """Keep at most `max_per_bin` rows per rounded score, chosen by a seeded hash (stable, not random
    across runs), so no score level dominates the critic's training data."""
    if not max_per_bin or frame.is_empty():
        return frame
    ranked = frame.with_columns(
        pl.col(column).round(0).alias("_bin"),
        pl.col("sample_id")
        .map_elements(lambda s: short_hash(s, seed), return_dtype=pl.String)
        .alias("_rank"),
    ).sort("_bin", "_rank")
    return ranked.filter(pl.int_range(pl.len()).over("_bin") < max_per_bin).drop("_bin", "_rank")


def _task_records(task: SftTask, frame: pl.DataFrame, image_refs: dict[str, str]) -> Iterator[str]:
    """The task's ShareGPT records (JSON texts) in frame order, made one at a time as the writer asks
    for them, from the task's own columns only. The record's images are `image_refs` of the row's
    image columns, placed before the rendered text as the template's image slots are."""
    template = load_template(task.template_id)
    if len(template.images) != len(task.image_columns):
        raise ValueError(
            f"template {template.id} has {len(template.images)} image slots, task {task.name}"
            f" names {len(task.image_columns)} image columns"
        )
    encode = RecordEncoder(template.system_text, len(task.image_columns))
    for row in frame.select(task.columns).iter_rows(named=True):
        variables = {name: row[column] for name, column in task.variable_columns.items()}
        images = [image_refs[row[column]] for column in task.image_columns]
        yield encode(template.user_text(variables), images, task.target(row))


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link (same file system, no extra bytes) or copy an image into the export; a link whose
    file this process may not make world-readable (another user's store) becomes a copy."""
    try:
        os.link(source, dest)
        os.chmod(dest, 0o644)
    except OSError:
        dest.unlink(missing_ok=True)
        shutil.copyfile(source, dest)


def world_readable(folder: Path) -> None:
    """0755 folders and 0644 files under (and including) `folder`, whatever the umask was."""
    os.chmod(folder, 0o755)
    for parent, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(Path(parent, name), 0o755)
        for name in files:
            os.chmod(Path(parent, name), 0o644)


def image_feature_column(path_column: str) -> str:
    """The column holding the image of a `*_path` column: `source_path` -> `source_image`,
    `image_path` -> `image`."""
    stem = path_column.removesuffix("_path")
    return stem if stem.endswith("image") else f"{stem}_image"


def huggingface_metadata(image_columns: Sequence[str]) -> dict[bytes, bytes]:
    """The Parquet schema metadata `datasets` reads its features from (`Features.from_arrow_schema`):
    the image columns as `Image` features; the other columns' types it reads from Arrow itself.
    Written by hand since `datasets` is no dependency of the product, only of its tests."""
    features = {image_feature_column(column): {"_type": "Image"} for column in image_columns}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _image_structs(relative: list[str | None], images: Path) -> pa.Array:
    """Each relative path's image as the `Image` struct, every distinct file read once."""
    read: dict[str, bytes] = {}
    for path in relative:
        if path is not None and path not in read:
            read[path] = (images / Path(path).name).read_bytes()
    structs = [None if path is None else {"bytes": read[path], "path": path} for path in relative]
    return pa.array(structs, IMAGE_STRUCT)


def _write_parquet(path: Path, frame: pl.DataFrame, image_names: dict[str, str], columns: list[str]) -> None:
    """`frame` as Parquet, converted a slice at a time and written a row group at a time (see
    PARQUET_ROWS); image columns become `images/<name>` (relative to the version folder), and each gains an
    `Image` column with the bytes of `path.parent/images/<name>`."""
    relative = [
        pl.concat_str(pl.lit("images/"), pl.col(c).replace_strict(image_names)).alias(c) for c in columns
    ]

    def table(part: pl.DataFrame) -> pa.Table:
        converted = part.with_columns(relative).to_arrow()
        for column in columns:
            images = _image_structs(converted[column].to_pylist(), path.parent / "images")
            converted = converted.append_column(pa.field(image_feature_column(column), IMAGE_STRUCT), images)
        return converted

    schema = table(frame.head(0)).schema.with_metadata(huggingface_metadata(columns))
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        start, rows = 0, min(PARQUET_FIRST_ROWS, PARQUET_ROWS)
        while start < frame.height:
            part = table(frame.slice(start, rows)).replace_schema_metadata(schema.metadata)
            writer.write_table(part, row_group_size=rows)
            start += part.num_rows
            per_row = sum(part[image_feature_column(c)].nbytes for c in columns) / part.num_rows
            rows = max(1, min(PARQUET_ROWS, int(PARQUET_GROUP_BYTES / max(per_row, 1.0))))


def card_dtype(kind: pa.DataType) -> str | dict:
    """A column's type as a dataset card's `dataset_info.features` writes it."""
    if kind == IMAGE_STRUCT:
        return "image"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return {"list": card_dtype(kind.value_type)}
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_floating(kind):
        return f"float{kind.bit_width}"
    return str(kind)


def write_card(
    folder: Path, name: str, version: str, params: dict, inputs: Sequence[tuple[str, str]]
) -> None:
    """The dataset card beside `data.parquet`: YAML front matter in the Hub's layout (the default
    config's data file and the features, images as `image`), then the provenance in prose."""
    schema = pq.read_schema(folder / "data.parquet")
    header = {
        "configs": [{"config_name": "default", "data_files": "data.parquet"}],
        "dataset_info": {
            "features": [{"name": field.name, "dtype": card_dtype(field.type)} for field in schema],
            "splits": [
                {"name": "train", "num_examples": pq.ParquetFile(folder / "data.parquet").metadata.num_rows}
            ],
        },
    }
    lines = [
        "---",
        json.dumps(header, indent=1),  # JSON is YAML; the Hub reads this front matter
        "---",
        f"# {name} {version}",
        "",
        f"Published by firm (FIRM curation). Version `{version}` is the content hash of its rows and",
        "parameters. Each `*_image` column holds an image's bytes; its `*_path` twin names the same",
        "file under `images/`.",
        "",
        "## Provenance",
        "",
        *[f"- input `{asset}` at data version `{data_version}`" for asset, data_version in inputs],
        "- parameters (filters, balancing, critic prompt templates, export layout):",
        "",
        "```json",
        json.dumps(params, indent=1, sort_keys=True),
        "```",
        "",
        f"Every sample's models, templates and runs: `firm audit dataset {name}@{version[:8]}`.",
        "",
    ]
    (folder / CARD).write_text("\n".join(lines), encoding="utf-8")


def _write_folder(
    folder: Path,
    frame: pl.DataFrame,
    tasks: Sequence[SftTask],
    params: dict,
    inputs: Sequence[tuple[str, str]],
) -> None:
    """Write into a temporary folder, then rename: a killed run never leaves half a version. Images
    are linked once per distinct path, however many rows share one; the Parquet file and the task
    files are written a row group or a record at a time, never as whole lists."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    image_columns = sorted({c for task in tasks for c in task.image_columns})
    paths = sorted(set().union(*(frame[c].unique().to_list() for c in image_columns)))
    image_names: dict[str, str] = {}
    taken: set[str] = set()
    for path in paths:
        name = Path(path).name
        if name in taken:  # the same file name in another folder: never one image for the other
            name = f"{short_hash(path)}-{name}"
        taken.add(name)
        image_names[path] = name
        link_or_copy(Path(path), tmp / "images" / name)
    _write_parquet(tmp / "data.parquet", frame, image_names, image_columns)
    dataset, version = folder.parent.name, folder.name
    write_card(tmp, dataset, version, params, inputs)
    image_refs = {path: image_ref(dataset, version, name) for path, name in image_names.items()}
    write_tasks(tmp, dataset, version, {task.name: _task_records(task, frame, image_refs) for task in tasks})
    world_readable(tmp)
    move_into_place(tmp, folder)


def move_into_place(tmp: Path, folder: Path) -> None:
    """Rename the finished folder to its version. The name is the content hash, so a folder already
    there (another run published this version, perhaps a moment ago) is the same version: keep it."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(tmp)


def record_provenance(con, dataset: str, version: str) -> None:
    """Summarise, once, which stages, models, templates and runs produced a version's samples."""
    con.execute(
        """
        INSERT INTO dataset_provenance
        SELECT m.dataset, m.version, c.stage, c.model_id, c.model_revision, c.template_id, c.template_version,
               count(DISTINCT m.sample_id), count(DISTINCT c.cache_key), list(DISTINCT c.dagster_run_id)
        FROM (SELECT dataset, version, sample_id, unnest(cache_keys) AS cache_key
              FROM dataset_members WHERE dataset = $1 AND version = $2) m
        JOIN inference_cache c USING (cache_key)
        GROUP BY ALL
        """,
        [dataset, version],
    )
    con.execute(
        "INSERT INTO dataset_sources SELECT dataset, version, source, count(*) FROM dataset_members"
        " WHERE dataset = $1 AND version = $2 GROUP BY ALL",
        [dataset, version],
    )


def dataset_version_id(frame: pl.DataFrame, params: dict) -> str:
    """The content hash of a version: its rows (paths aside: they depend on FIRM_HOME) and params."""
    path_columns = [c for c in frame.columns if c.endswith("_path")]
    return frame_version(
        frame.drop(path_columns).with_columns(pl.lit(json.dumps(params)).alias("_p")), "sample_id"
    )


def register_version(
    warehouse: Warehouse,
    name: str,
    version: str,
    frame: pl.DataFrame,
    params: dict,
    folder: Path,
    run_id: str | None,
    mlflow_run_id: str | None,
) -> None:
    """Membership, sources and provenance of a new version, in one transaction; a version another
    run registered meanwhile is left as it is (same content, same rows)."""
    with warehouse.transaction() as con:
        exists = con.execute(
            "SELECT count(*) FROM dataset_versions WHERE dataset = ? AND version = ?", [name, version]
        ).fetchall()[0][0]
        if exists:
            return
        con.execute(
            "INSERT INTO dataset_versions (dataset, version, n_samples, params, parquet_path,"
            " export_path, dagster_run_id, mlflow_run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                name,
                version,
                frame.height,
                json.dumps(params),
                str(folder / "data.parquet"),
                str(folder),
                run_id,
                mlflow_run_id,
            ],
        )
        members = frame.select(
            pl.lit(name).alias("dataset"),
            pl.lit(version).alias("version"),
            "sample_id",
            "source",
            "cache_keys",
        )
        con.register("members_frame", members.to_arrow())
        con.execute("INSERT INTO dataset_members SELECT * FROM members_frame")
        con.unregister("members_frame")
        record_provenance(con, name, version)


def known_version(warehouse: Warehouse, name: str, version: str) -> tuple[str | None] | None:
    """(mlflow run id,) of an already published version, else None."""
    rows = warehouse.rows(
        "SELECT mlflow_run_id FROM dataset_versions WHERE dataset = ? AND version = ?", [name, version]
    )
    return rows[0] if rows else None


def publish_dataset(
    name: str,
    frame: pl.DataFrame,
    tasks: Sequence[SftTask],
    params: dict,
    inputs: Sequence[tuple[str, str]],
    warehouse: Warehouse,
    run_id: str | None,
    log_mlflow: Callable[[str, Path], str],
) -> PublishedDataset:
    """`frame` needs `sample_id`, `source` and `cache_keys` (the calls that produced the row) columns.
    A version already published is not written or logged again; its lineage edge is still recorded.
    `log_mlflow(version, folder) -> mlflow run id` logs a new version; `inputs` are upstream versions."""
    params = {**params, "export_layout": EXPORT_LAYOUT}
    version = dataset_version_id(frame, params)
    root = firm_home() / "datasets"
    folder = root / name / version
    known = known_version(warehouse, name, version)
    if known is None:
        if not folder.exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            for parent in (root, folder.parent):
                os.chmod(parent, 0o755)
            _write_folder(folder, frame.sort("sample_id"), tasks, params, inputs)
        index_exports(root)
        mlflow_run_id = log_mlflow(version, folder)
        register_version(warehouse, name, version, frame, params, folder, run_id, mlflow_run_id)
    else:
        (mlflow_run_id,) = known
    record_lineage(warehouse, (name, version), inputs, run_id, mlflow_run_id)
    return PublishedDataset(name, version, folder, frame.height)
