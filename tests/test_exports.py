"""Exports that load where users load them: the LLaMA-Factory ShareGPT contract (placeholder counts,
roles, image paths from the folder of `dataset_info.json`, edit and gen side by side), a Parquet
version folder that `datasets` loads after it is copied away from the image store, and files that
stay world-readable under a restrictive umask. Text full of literal `<image>` and `<video>` goes
through the real publisher; the project's trainer reads it back through the same reader."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from firm_assets.critics.data import example, index_tasks
from firm_assets.curation import dataset as dataset_module
from firm_assets.curation.dataset import SftTask, image_feature_column, publish_dataset
from firm_assets.curation.prompts import load_template, neutral_text
from firm_assets.curation.sharegpt import (
    INFO_FILE,
    PLACEHOLDERS,
    ExportContractError,
    RecordEncoder,
    escape,
    index_exports,
    parse_record,
    read_task,
    sharegpt_record,
    unescape,
    write_records,
    write_tasks,
)
from firm_assets.edit.dataset import TASKS as EDIT_TASKS
from firm_assets.gen.dataset import TASKS as GEN_TASKS
from resources.chat import ImagePart
from warehouse.connection import Warehouse

TRICKY = (
    "<image>",
    "<video>",
    "<audio>",
    "<\\image>",
    "<<image>>",
    "<image",
    "image>",
    "\\",
    "<",
    ">",
    "a b",
)


def tricky_text(rng: random.Random, length: int) -> str:
    """Text built from placeholders, their escaped forms and their fragments."""
    return "".join(rng.choice(TRICKY) for _ in range(length))


# escaping


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("Put <image> on the sign", "Put <\\image> on the sign"),
        ("<video><audio>", "<\\video><\\audio>"),
        ("<\\image> stays apart", "<\\\\image> stays apart"),
        ("<<image>>", "<<\\image>>"),
        ("<Image> <images> <image", "<Image> <images> <image"),
        ("no placeholder", "no placeholder"),
    ],
)
def test_escape_adds_one_backslash_after_the_bracket(text: str, escaped: str) -> None:
    assert escape(text) == escaped
    assert unescape(escaped) == text


def test_escaped_text_never_holds_a_placeholder_and_round_trips() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        text = tricky_text(rng, rng.randint(0, 12))
        escaped = escape(text)
        assert not any(p in escaped for p in PLACEHOLDERS), text
        assert unescape(escaped) == text


# the record contract


def _record(tmp_path: Path, **changes) -> dict:
    (tmp_path / "a.png").write_bytes(b"png")
    record = {
        "messages": [
            {"role": "system", "content": "grade"},
            {"role": "user", "content": "<image>Is it red?"},
            {"role": "assistant", "content": "yes"},
        ],
        "images": ["a.png"],
    }
    return {**record, **changes}


def test_a_valid_record_reads_as_system_parts_and_answer(tmp_path: Path) -> None:
    record = _record(tmp_path)
    record["messages"][1]["content"] = "<image>Is <\\image> red?<image>"
    record["images"] = ["a.png", "a.png"]
    parsed = parse_record(record, tmp_path)
    assert parsed.system == "grade" and parsed.answer == "yes"
    assert parsed.user == (tmp_path / "a.png", "Is <image> red?", tmp_path / "a.png")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"images": ["a.png", "a.png"]}, "placeholders"),
        ({"images": []}, "placeholders"),
        ({"images": ["missing.png"]}, "not a file"),
        ({"images": "a.png"}, "not a list of paths"),
        (
            {"messages": [{"role": "assistant", "content": "yes"}, {"role": "user", "content": "<image>"}]},
            "roles",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "<image>"},
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            },
            "roles",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "<image><video>"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "placeholders",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "<image>"}]},
            "placeholders",
        ),
        (
            {"messages": [{"role": "user", "content": ["<image>"]}, {"role": "assistant", "content": "a"}]},
            "string",
        ),
    ],
)
def test_records_llama_factory_would_reject_are_refused(tmp_path: Path, changes: dict, reason: str) -> None:
    with pytest.raises(ExportContractError, match=reason):
        parse_record(_record(tmp_path, **changes), tmp_path)


def test_an_absolute_image_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportContractError, match="not a file under the export root"):
        parse_record(_record(tmp_path, images=[str(tmp_path / "a.png")]), tmp_path)


def test_the_root_index_lists_exactly_the_finished_versions(tmp_path: Path) -> None:
    for dataset, version in (("a", "v1"), ("b", "v2")):
        (tmp_path / dataset / version).mkdir(parents=True)
        write_tasks(tmp_path / dataset / version, dataset, version, {"t": []})
    (tmp_path / "a" / "v3.tmp99").mkdir()  # a publisher still writing: no manifest yet
    info = json.loads(index_exports(tmp_path).read_text())
    assert set(info) == {"t@v1", "t@v2"} and info["t@v2"]["file_name"] == "b/v2/t.json"
    shutil.rmtree(tmp_path / "a")
    assert set(json.loads(index_exports(tmp_path).read_text())) == {"t@v2"}
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [INFO_FILE]  # no temporary file left


# the real publisher


def _image(path: Path, colour: tuple[int, int, int]) -> tuple[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), colour).save(path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_frame(store: Path, rng: random.Random) -> pl.DataFrame:
    rows = []
    for i in range(6):
        # the same file name in two folders: the export must keep both images apart
        source, source_sha = _image(store / "sources" / f"{i % 2}" / "image.png", (i % 2 * 100, 10, 10))
        edited, edited_sha = _image(store / "edits" / f"{i}.png", (10, i * 40, 10))
        rows.append(
            {
                "sample_id": f"edit-{i}",
                "source": "editor",
                "instruction": f"Write <image> on the sign {tricky_text(rng, 4)}",
                "requirement": None if i % 2 else "keep the <video> frame",
                "source_sha": source_sha,
                "source_path": source,
                "edited_sha": edited_sha,
                "edited_path": edited,
                "execution_score": float(1 + i % 5),
                "execution_reasoning": f"It shows <image> text {tricky_text(rng, 3)}",
                "consistency_score": 4.0,
                "consistency_reasoning": "Nothing else changed <\\image>.",
                "cache_keys": [f"k{i}"],
            }
        )
    return pl.DataFrame(rows)


def _gen_frame(store: Path, rng: random.Random) -> pl.DataFrame:
    rows = []
    for i in range(4):
        image, image_sha = _image(store / "generated" / f"{i}.png", (10, 10, i * 50))
        verdicts = [
            {"item": 1, "question": "Is there an <image> frame?", "verdict": "yes", "evidence": "<video>"}
        ]
        rows.append(
            {
                "sample_id": f"gen-{i}",
                "source": "generator",
                "prompt": f"A poster that says <image> {tricky_text(rng, 4)}",
                "image_sha": image_sha,
                "image_path": image,
                "if_score": 3.0,
                "if_reasoning": "The <image> word is there.",
                "verdicts": json.dumps(verdicts),
                "quality_scores": [4, 3, 5],
                "quality_reasoning": "<audio> clean",
                "cache_keys": [f"g{i}"],
            }
        )
    return pl.DataFrame(rows)


@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The edit and gen datasets published into one FIRM_HOME under umask 077."""
    home = tmp_path / "firm-home"
    monkeypatch.setenv("FIRM_HOME", str(home))
    monkeypatch.delenv("FIRM_TEMPLATE_DIR", raising=False)
    rng = random.Random(11)
    store = tmp_path / "store"
    frames = {"firm_edit": _edit_frame(store, rng), "firm_gen": _gen_frame(store, rng)}
    tasks = {"firm_edit": EDIT_TASKS, "firm_gen": GEN_TASKS}
    old_umask = os.umask(0o077)
    try:
        warehouse = Warehouse(home / "warehouse.duckdb")
        folders = {
            name: publish_dataset(
                name, frame, tasks[name], {}, [("synthetic", "v0")], warehouse, None, lambda *_: None
            ).folder
            for name, frame in frames.items()
        }
    finally:
        os.umask(old_umask)
    return {"home": home, "store": store, "frames": frames, "folders": folders}


def test_edit_and_gen_exports_meet_the_contract_side_by_side(published: dict) -> None:
    root = published["home"] / "datasets"
    info = json.loads((root / INFO_FILE).read_text())
    versions = {name: folder.name for name, folder in published["folders"].items()}
    assert set(info) == {
        f"edit_execution@{versions['firm_edit']}",
        f"edit_consistency@{versions['firm_edit']}",
        f"gen_instruction@{versions['firm_gen']}",
        f"gen_quality@{versions['firm_gen']}",
    }
    for entry, spec in info.items():
        records = json.loads((root / spec["file_name"]).read_text())
        assert len(records) == (6 if entry.startswith("edit") else 4)
        for record in records:
            # what LLaMA-Factory checks, counted here on the raw JSON
            assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
            text = "".join(m["content"] for m in record["messages"])
            assert text.count("<image>") == len(record["images"]) == (2 if entry.startswith("edit") else 1)
            assert text.count("<video>") == text.count("<audio>") == 0
            assert all(
                (root / image).is_file() and not Path(image).is_absolute() for image in record["images"]
            )


def test_literal_placeholders_come_back_unchanged_through_the_reader(published: dict) -> None:
    edit = published["frames"]["firm_edit"].sort("sample_id")
    folder = published["folders"]["firm_edit"]
    records = read_task(folder, "edit_execution")
    for record, row in zip(records, edit.iter_rows(named=True), strict=True):
        assert [type(part) for part in record.user] == [type(folder), type(folder), str]
        assert neutral_text(row["instruction"]) in record.user[2]  # as the bench and serving render it
        assert json.loads(record.answer)["reasoning"] == row["execution_reasoning"]
        # each placeholder is the row's own image: the right file, even where file names clash
        for part, sha in zip(record.user[:2], (row["source_sha"], row["edited_sha"]), strict=True):
            assert hashlib.sha256(part.read_bytes()).hexdigest() == sha
    gen = read_task(published["folders"]["firm_gen"], "gen_instruction")
    assert all("| yes | <video>" in record.answer and "<image> frame?" in record.answer for record in gen)


def test_the_trainer_reads_the_export_through_the_contract_reader(published: dict) -> None:
    folder = published["folders"]["firm_edit"]
    index = index_tasks(folder, ["edit_execution", "edit_consistency"])
    assert len(index) == 12
    expected = read_task(folder, "edit_execution")
    for position, record in enumerate(expected):
        item = example(index.record(position))
        assert item["target"] == record.answer
        assert item["images"] == [p for p in record.user if isinstance(p, Path)]
        assert item["request"].system == record.system


def test_the_trainer_refuses_a_broken_export(published: dict) -> None:
    folder = published["folders"]["firm_gen"]
    task_file = folder / "gen_quality.json"
    records = json.loads(task_file.read_text())
    records[2]["messages"][1]["content"] += "<image>"
    task_file.write_text(json.dumps(records))
    with pytest.raises(ExportContractError, match=r"gen_quality.json record 2: placeholders"):
        index_tasks(folder, ["gen_quality"])


def test_a_copied_parquet_version_loads_with_datasets_without_the_image_store(
    published: dict, tmp_path: Path
) -> None:
    import datasets

    copies = tmp_path / "elsewhere"
    for name, folder in published["folders"].items():
        shutil.copytree(folder, copies / name)
    shutil.rmtree(published["store"])
    shutil.rmtree(published["home"])
    checked = 0
    for name, shas in {"firm_edit": ("source", "edited"), "firm_gen": ("image",)}.items():
        loaded = datasets.load_dataset(
            "parquet",
            data_files=str(copies / name / "data.parquet"),
            split="train",
            cache_dir=str(tmp_path / "hf-cache"),
        )
        assert loaded.num_rows == published["frames"][name].height
        for row in loaded:
            for prefix in shas:
                path = copies / name / row[f"{prefix}_path"]
                with Image.open(path) as image:
                    image.load()
                    assert image.size == (24, 16)
                assert hashlib.sha256(path.read_bytes()).hexdigest() == row[f"{prefix}_sha"]
                checked += 1
    assert checked == 6 * 2 + 4


def test_a_lone_copied_data_parquet_loads_its_images_with_datasets(published: dict, tmp_path: Path) -> None:
    """Only `data.parquet`, copied to another folder: `datasets` reads the image columns as its
    `Image` feature (from the file's own metadata) and decodes the pictures from the file."""
    import datasets

    columns = {"firm_edit": ("source", "edited"), "firm_gen": ("image",)}
    for name, prefixes in columns.items():
        lone = tmp_path / "lone" / name
        lone.mkdir(parents=True)
        shutil.copy(published["folders"][name] / "data.parquet", lone / "data.parquet")
        loaded = datasets.load_dataset(
            "parquet", data_files=str(lone / "data.parquet"), split="train", cache_dir=str(tmp_path / "hf")
        )
        image_columns = [prefix if prefix == "image" else f"{prefix}_image" for prefix in prefixes]
        for column in image_columns:
            assert isinstance(loaded.features[column], datasets.Image)
        for row in loaded:
            for column in image_columns:
                assert row[column].size == (24, 16)  # a PIL image, decoded from the file's bytes
        raw = loaded.cast_column(image_columns[0], datasets.Image(decode=False))
        for row in raw:
            assert hashlib.sha256(row[image_columns[0]]["bytes"]).hexdigest() == row[f"{prefixes[0]}_sha"]
            assert row[image_columns[0]]["path"] == row[f"{prefixes[0]}_path"]


def test_the_dataset_card_names_the_features_and_the_provenance(published: dict) -> None:
    card = (published["folders"]["firm_edit"] / "README.md").read_text()
    _, header, body = card.split("---\n", 2)
    meta = json.loads(header)
    assert meta["configs"] == [{"config_name": "default", "data_files": "data.parquet"}]
    features = {feature["name"]: feature["dtype"] for feature in meta["dataset_info"]["features"]}
    assert features["source_image"] == features["edited_image"] == "image"
    assert features["source_path"] == "string" and features["sample_id"] == "string"
    assert meta["dataset_info"]["splits"] == [{"name": "train", "num_examples": 6}]
    assert "- input `synthetic` at data version `v0`" in body
    assert '"export_layout": 4' in body


def test_exports_are_world_readable_under_a_restrictive_umask(published: dict) -> None:
    root = published["home"] / "datasets"
    seen = 0
    for parent, folders, files in os.walk(root):
        assert stat.S_IMODE(os.stat(parent).st_mode) == 0o755, parent
        for name in files:
            assert stat.S_IMODE(os.stat(Path(parent, name)).st_mode) == 0o644, Path(parent, name)
            seen += 1
        assert not any(".tmp" in name for name in [*folders, *files])
    # root index, then per version: parquet, card, manifest, task files and images
    assert seen == 1 + (1 + 1 + 1 + 2 + 8) + (1 + 1 + 1 + 2 + 4)


# streaming writers: a record or a row group at a time, never whole lists


def test_records_are_written_one_per_line_as_a_json_array(tmp_path: Path) -> None:
    records = ['{"a": 1}', '{"b": "<\\\\image> \\u00e9"}']
    path = tmp_path / "task.json"
    assert write_records(path, iter(records)) == 2
    assert path.read_text() == '[\n{"a": 1},\n{"b": "<\\\\image> \\u00e9"}\n]\n'
    assert json.loads(path.read_text()) == [{"a": 1}, {"b": "<\\image> é"}]
    assert write_records(tmp_path / "empty.json", iter([])) == 0
    assert (tmp_path / "empty.json").read_text() == "[]\n"


def _record_dict(system: str | None, user: str, images: list[str], answer: str) -> dict:
    """A record as the former writer built it, as a dict that `json.dumps` then encoded."""
    messages = [{"role": "user", "content": "<image>" * len(images) + escape(user)}]
    if system:
        messages.insert(0, {"role": "system", "content": escape(system)})
    messages.append({"role": "assistant", "content": escape(answer)})
    return {"messages": messages, "images": list(images)}


def test_a_record_is_the_json_dumps_text_of_the_former_dict() -> None:
    rng = random.Random(5)
    pieces = (*TRICKY, "é", "日本", "\U0001f600", '"', "\n", "\t", "\x00", "\x1f", "\u2028", "{}", ", ")
    for _ in range(500):
        system = rng.choice([None, "", "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))])
        user, answer = ("".join(rng.choice(pieces) for _ in range(rng.randint(0, 10))) for _ in range(2))
        images = [f"d/v/images/{rng.choice(pieces)}{k}.png" for k in range(rng.randint(0, 2))]
        encode = RecordEncoder(system, len(images))
        assert encode(user, images, answer) == json.dumps(_record_dict(system, user, images, answer))
        assert sharegpt_record(system, user, images, answer) == encode(user, images, answer)
    with pytest.raises(ValueError, match="1 images given for records of 2"):
        RecordEncoder("s", 2)("u", ["a.png"], "a")


def _whole_list_export(task: SftTask, frame: pl.DataFrame, image_refs: dict[str, str]) -> list[dict]:
    """The former writer's records: each rendered with the row's own image parts and the whole row,
    built as a dict (all kept in one list)."""
    template = load_template(task.template_id)
    records = []
    for row in frame.iter_rows(named=True):
        variables = {name: row[column] or "none" for name, column in task.variable_columns.items()}
        images = {
            name: ImagePart(Path(row[column]), "")
            for name, column in zip(template.images, task.image_columns, strict=True)
        }
        request = template.render(variables, images)
        text = next(part for part in request.user if isinstance(part, str))
        refs = [image_refs[row[column]] for column in task.image_columns]
        records.append(_record_dict(request.system, text, refs, task.target(row)))
    return records


@pytest.mark.parametrize(("dataset", "tasks"), [("firm_edit", EDIT_TASKS), ("firm_gen", GEN_TASKS)])
def test_streamed_exports_hold_the_records_of_the_whole_list_writer(
    published: dict, dataset: str, tasks: tuple[SftTask, ...]
) -> None:
    frame = published["frames"][dataset].sort("sample_id")
    folder = published["folders"][dataset]
    parquet = pl.read_parquet(folder / "data.parquet")
    image_columns = sorted({c for task in tasks for c in task.image_columns})
    # the Parquet file: the frame's rows in sample order, image columns relative to the folder, and
    # each image's bytes beside its path
    features = [image_feature_column(column) for column in image_columns]
    assert parquet.drop(image_columns + features).equals(frame.drop(image_columns))
    image_refs = {}
    for column, feature in zip(image_columns, features, strict=True):
        for original, relative, image in zip(frame[column], parquet[column], parquet[feature], strict=True):
            assert relative.startswith("images/") and (folder / relative).is_file()
            assert image == {"bytes": Path(original).read_bytes(), "path": relative}
            image_refs[original] = f"{dataset}/{folder.name}/{relative}"
    for task in tasks:
        written = (folder / f"{task.name}.json").read_text()
        # byte for byte what the former writer wrote: "[", json.dumps of one record a line, "]"
        records = _whole_list_export(task, frame, image_refs)
        assert written == "[\n" + ",\n".join(json.dumps(record) for record in records) + "\n]\n"
        assert len(read_task(folder, task.name)) == frame.height


def test_parquet_is_written_a_row_group_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_module, "PARQUET_ROWS", 2)
    frame = pl.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "edited_path": ["/s/x.png", "/t/x.png", "/s/x.png"],
            "score": [1.0, None, 3.0],
        }
    )
    names = {"/s/x.png": "x.png", "/t/x.png": "0a1b-x.png"}
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(b"first")
    (tmp_path / "images" / "0a1b-x.png").write_bytes(b"second")
    dataset_module._write_parquet(tmp_path / "data.parquet", frame, names, ["edited_path"])
    assert pq.ParquetFile(tmp_path / "data.parquet").metadata.num_row_groups == 2
    assert pl.read_parquet(tmp_path / "data.parquet").to_dict(as_series=False) == {
        "sample_id": ["a", "b", "c"],
        "edited_path": ["images/x.png", "images/0a1b-x.png", "images/x.png"],
        "score": [1.0, None, 3.0],
        "edited_image": [
            {"bytes": b"first", "path": "images/x.png"},
            {"bytes": b"second", "path": "images/0a1b-x.png"},
            {"bytes": b"first", "path": "images/x.png"},
        ],
    }
    # groups sized by the image bytes of the one before: here one row each
    monkeypatch.setattr(dataset_module, "PARQUET_ROWS", 50)
    monkeypatch.setattr(dataset_module, "PARQUET_FIRST_ROWS", 1)
    monkeypatch.setattr(dataset_module, "PARQUET_GROUP_BYTES", 1)
    dataset_module._write_parquet(tmp_path / "small.parquet", frame, names, ["edited_path"])
    assert pq.ParquetFile(tmp_path / "small.parquet").metadata.num_row_groups == 3
    assert pl.read_parquet(tmp_path / "small.parquet").equals(pl.read_parquet(tmp_path / "data.parquet"))
    metadata = pq.read_schema(tmp_path / "data.parquet").metadata[b"huggingface"]
    assert json.loads(metadata) == {"info": {"features": {"edited_image": {"_type": "Image"}}}}
    dataset_module._write_parquet(tmp_path / "empty.parquet", frame.head(0), {}, ["edited_path"])
    empty = pl.read_parquet(tmp_path / "empty.parquet")
    assert empty.height == 0 and empty.columns == [*frame.columns, "edited_image"]


def test_a_task_reads_only_its_prompt_image_and_answer_columns() -> None:
    assert EDIT_TASKS[0].columns == [
        "instruction",
        "requirement",
        "source_path",
        "edited_path",
        "execution_reasoning",
        "execution_score",
    ]
    assert GEN_TASKS[0].columns == ["prompt", "image_path", "verdicts", "if_reasoning", "if_score"]
    assert GEN_TASKS[1].columns == ["image_path", "quality_scores", "quality_reasoning"]
