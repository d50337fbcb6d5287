"""Released training data: a LLaMA-Factory ShareGPT dataset (the layout its data/README.md documents;
FIRM's own released files document none) imported with `firm import-dataset` as a dataset version
whose provenance is its files and their sha256, bad records quarantined with their reasons; a tiny
edit critic trained on it through `firm_edit_critic` by run config; `firm audit` naming the files.

The files are written here: JSON Lines in the `messages` (OpenAI) tags with image paths, a JSON
array in the default `conversations` tags with a `system` column, and Parquet holding its images
as Hugging Face `Image` structs (bytes)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_runs import firm
from curated import new_home
from dagster import Output, asset, materialize
from PIL import Image

from firm_assets.benchmark.baselines import BaselineUnavailable, median_labels
from firm_assets.benchmark.checks import contaminated_items
from firm_assets.cli import main
from firm_assets.critics.assets import firm_edit_critic
from firm_assets.critics.released import read_record
from firm_assets.curation.lines import BadLine
from firm_assets.curation.sharegpt import read_task
from firm_assets.definitions import build_resources
from resources.home import warehouse_path
from warehouse.connection import Warehouse

SYSTEM = "You grade image edits."
COLOURS = ("red", "blue", "green", "white", "black", "yellow")
RECIPE = {"per_device_batch_size": 2, "epochs": 1, "dataloader_workers": 0, "checkpoint_every": 0}
pytestmark = pytest.mark.timeout(600)


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _answer(i: int) -> str:
    return json.dumps({"reasoning": f"the edit made it {COLOURS[i % len(COLOURS)]}", "score": 1 + i % 5})


def _messages(user: str, answer: str | None) -> list[dict]:
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return turns + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def write_released(folder: Path) -> dict[str, Path]:
    """Three files of the documented shape; 10 good records and 6 bad ones."""
    (folder / "images").mkdir(parents=True)
    for colour in COLOURS:
        (folder / "images" / f"{colour}.png").write_bytes(_png(colour))
    pair = lambda c: ["images/white.png", f"images/{c}.png"]  # noqa: E731 (source, edited)
    execution = [
        *(
            {"messages": _messages(f"<image><image>Make it {c}.", _answer(i)), "images": pair(c)}
            for i, c in enumerate(COLOURS[:4])
        ),
        {"messages": _messages("<image><image>Make it pink.", _answer(9)), "images": pair("pink")},
        {"messages": _messages("<image><image>Make it red.", None), "images": pair("red")},
        {"messages": _messages("<image>Make it red.", _answer(1)), "images": pair("red")},
        [1, 2],
    ]
    jsonl = folder / "execution.jsonl"
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in execution))

    consistency = [
        {
            "conversations": [
                {"from": "human", "value": f"Is anything but the colour changed? <image><image>{c}"},
                {"from": "gpt", "value": _answer(i + 2)},
            ],
            "system": SYSTEM,
            "images": pair(c),
        }
        for i, c in enumerate(COLOURS[:4])
    ]
    consistency.append({**consistency[0], "images": ["../outside.png", "images/red.png"]})
    array = folder / "consistency.json"
    array.write_text(json.dumps(consistency, indent=1))

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [
        (_messages("<image><image>Make it black.", _answer(4)), [_png("white"), _png("black")]),
        (_messages("<image><image>Make it yellow.", _answer(5)), [_png("white"), _png("yellow")]),
        (_messages("<image><image>Make it blue.", _answer(0)), [_png("white"), b"not an image"]),
    ]
    table = pa.table(
        {
            "messages": [turns for turns, _ in rows],
            "images": pa.array(
                [[{"bytes": data, "path": None} for data in images] for _, images in rows], pa.list_(struct)
            ),
        }
    )
    parquet = folder / "execution-00001.parquet"
    pq.write_table(table, parquet)
    return {"jsonl": jsonl, "json": array, "parquet": parquet}


def _import(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["import-dataset", *args])
    return code, out.getvalue()


def _firm(home: Path, *args: str) -> subprocess.CompletedProcess:
    return firm(*args, home=home)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """One home with the three files imported as firm_edit (execution: JSONL + Parquet)."""
    folder = tmp_path_factory.mktemp("released")
    home = new_home(folder, tiny_model_dir)
    files = write_released(folder / "release")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIRM_HOME", str(home))
        for name in ("FIRM_PROFILE", "MLFLOW_TRACKING_URI"):
            patch.delenv(name, raising=False)
        code, out = _import(
            "firm_edit",
            "--task",
            "edit_execution",
            str(files["jsonl"]),
            str(files["parquet"]),
            "--task",
            "edit_consistency",
            str(files["json"]),
        )
        assert code == 0, out
        version = out.split(" version ")[1].split()[0]
        yield {"home": home, "files": files, "out": out, "version": version}


def test_read_record_takes_both_documented_tag_sets_and_says_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png("red"))
    openai = {"messages": _messages("<image>Rate it.", "4"), "images": ["a.png"]}
    record = read_record(openai, tmp_path)
    assert (record.system, record.user, record.answer) == (SYSTEM, "<image>Rate it.", "4")
    assert record.images == (tmp_path / "a.png",)
    default = {
        "conversations": [{"from": "human", "value": "Rate <image> it."}, {"from": "gpt", "value": "3"}],
        "system": "S",
        "images": [{"bytes": b"png-bytes", "path": "ignored.png"}],
    }
    record = read_record(default, tmp_path)
    assert (record.system, record.user, record.answer, record.images) == (
        "S",
        "Rate <image> it.",
        "3",
        (b"png-bytes",),
    )
    assert read_record({"messages": _messages("No image.", "2")}, tmp_path).images == ()

    bad = {
        "no assistant turn": {"messages": _messages("<image>x", None), "images": ["a.png"]},
        "1 images but placeholders {'<image>': 2": {
            "messages": _messages("<image><image>x", "1"),
            "images": ["a.png"],
        },
        "all in the user turn": {"messages": _messages("x", "<image>"), "images": ["a.png"]},
        "'<video>': 1": {"messages": _messages("<video>x", "1")},
        "missing file: 'b.png'": {"messages": _messages("<image>x", "1"), "images": ["b.png"]},
        "escapes the dataset root": {"messages": _messages("<image>x", "1"), "images": ["../a.png"]},
        "no turns: neither conversations nor messages": {"text": "x"},
        "a record must be an object, not list": [1],
        "only one user turn followed by one assistant turn": {
            "messages": [
                *_messages("a", "b"),
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"},
            ]
        },
    }
    for reason, raw in bad.items():
        with pytest.raises(BadLine) as error:
            read_record(raw, tmp_path)
        assert reason in error.value.reason, (reason, error.value.reason)


def test_import_keeps_good_records_quarantines_bad_ones_and_records_the_files(imported, monkeypatch) -> None:
    home, files, out, version = imported["home"], imported["files"], imported["out"], imported["version"]
    monkeypatch.setenv("FIRM_HOME", str(home))
    assert f"firm_edit version {version} imported: records edit_consistency 4, edit_execution 6;" in out
    run_config = f"ops: {{firm_edit_critic: {{config: {{dataset_version: '{version}'}}}}}}"
    assert f"train firm_edit_critic on it with this run config (firm run -c FILE): {run_config}" in out
    warehouse = Warehouse(warehouse_path())
    reasons = dict(warehouse.rows("SELECT source || ' ' || locator, reason FROM quarantine"))
    assert set(reasons) == {
        f"{files['jsonl']} record 4",
        f"{files['jsonl']} record 5",
        f"{files['jsonl']} record 6",
        f"{files['jsonl']} record 7",
        f"{files['json']} record 4",
        f"{files['parquet']} record 2",
    }
    assert reasons[f"{files['jsonl']} record 4"] == "image 'images/pink.png': missing file: 'images/pink.png'"
    assert reasons[f"{files['jsonl']} record 5"] == "no assistant turn"
    assert "2 images but placeholders {'<image>': 1" in reasons[f"{files['jsonl']} record 6"]
    assert reasons[f"{files['jsonl']} record 7"] == "a record must be an object, not list"
    assert "escapes the dataset root" in reasons[f"{files['json']} record 4"]
    assert reasons[f"{files['parquet']} record 2"].startswith("image 1: not a recognised image")
    for line in reasons:
        assert f"quarantined {line}: {reasons[line]}" in out

    # the version's provenance: the files and their hashes, no cache keys, an imported source
    (params,) = warehouse.rows("SELECT params FROM dataset_versions WHERE version = ?", [version])[0]
    listed = {
        (f["task"], f["path"], f["sha256"], f["records"], f["quarantined"])
        for f in json.loads(params)["imported_files"]
    }
    assert listed == {
        ("edit_execution", str(files["jsonl"]), _sha(files["jsonl"]), 4, 4),
        ("edit_execution", str(files["parquet"]), _sha(files["parquet"]), 2, 1),
        ("edit_consistency", str(files["json"]), _sha(files["json"]), 4, 1),
    }
    sources = dict(warehouse.rows("SELECT source, samples FROM dataset_sources WHERE version = ?", [version]))
    assert sources == {
        "imported:execution.jsonl": 4,
        "imported:execution-00001.parquet": 2,
        "imported:consistency.json": 4,
    }
    assert warehouse.rows(
        "SELECT count(*) FROM dataset_members WHERE version = ? AND len(cache_keys) > 0", [version]
    ) == [(0,)]
    assert warehouse.rows("SELECT count(*) FROM dataset_provenance WHERE version = ?", [version]) == [(0,)]

    # the records read back through the project's reader (LLaMA-Factory's contract), images intact
    folder = home / "datasets" / "firm_edit" / version
    execution = read_task(folder, "edit_execution")
    assert [r.answer for r in execution] == [_answer(i) for i in (0, 1, 2, 3, 4, 5)]
    assert execution[0].system == SYSTEM and execution[0].user[2] == "Make it red."
    assert [Image.open(p).getpixel((0, 0)) for p in execution[5].user[:2]] == [(255, 255, 255), (255, 255, 0)]
    consistency = read_task(folder, "edit_consistency")
    assert (
        consistency[1].user[0] == "Is anything but the colour changed? " and consistency[1].system == SYSTEM
    )
    assert Image.open(consistency[1].user[2]).getpixel((0, 0)) == (0, 0, 255)


def test_the_version_is_the_files_content(imported, tmp_path: Path, monkeypatch) -> None:
    home, files, version = imported["home"], imported["files"], imported["version"]
    monkeypatch.setenv("FIRM_HOME", str(home))
    tasks = ["--task", "edit_consistency", str(files["json"]), "--task", "edit_execution"]
    code, out = _import("firm_edit", *tasks, str(files["parquet"]), str(files["jsonl"]))
    assert (
        code == 0
        and f"version {version} already imported: records edit_consistency 4, edit_execution 6" in out
    )
    changed = tmp_path / "execution.jsonl"
    changed.write_text(files["jsonl"].read_text().replace("made it red", "made it RED"))
    code, out = _import(
        "firm_edit", "--task", "edit_execution", str(changed), "--media-dir", str(files["jsonl"].parent)
    )
    assert code == 0 and " imported: records edit_execution 4;" in out and version not in out

    assert _import("firm_edit", "--task", "gen_quality", str(files["json"]))[0] == 1
    assert _import("firm_edit", "--task", "edit_execution", str(tmp_path / "none.jsonl"))[0] == 1
    bad_only = tmp_path / "bad.jsonl"
    bad_only.write_text('{"messages": []}\n')
    assert _import("firm_edit", "--task", "edit_execution", str(bad_only))[0] == 1


@asset(name="firm_edit_dataset")
def unregistered_upstream() -> Output[pl.DataFrame]:
    """An upstream whose version is in no warehouse: a critic that trained on it would fail."""
    return Output(
        pl.DataFrame({"sample_id": ["u"], "source": ["curated"], "dataset_version": ["not-registered"]})
    )


def test_a_critic_trains_on_the_imported_version_and_audits_to_its_files(imported, monkeypatch) -> None:
    home, files, version = imported["home"], imported["files"], imported["version"]
    monkeypatch.setenv("FIRM_HOME", str(home))
    run_config = {"ops": {"firm_edit_critic": {"config": {**RECIPE, "dataset_version": version[:10]}}}}
    result = materialize(
        [unregistered_upstream, firm_edit_critic], resources=build_resources(), run_config=run_config
    )
    assert result.success
    metadata = result.asset_materializations_for_node("firm_edit_critic")[0].metadata
    assert metadata["dataset_version"].value == version
    assert (metadata["examples"].value, metadata["val_examples"].value) == (10, 1)
    (row,) = Warehouse(warehouse_path()).query("SELECT * FROM critics").iter_rows(named=True)
    assert (row["dataset"], row["dataset_version"]) == ("firm_edit", version)

    audit = _firm(home, "audit", "critic", "firm_edit_critic")
    assert audit.returncode == 0, audit.stderr
    assert f"trained on dataset firm_edit version {version}" in audit.stdout
    assert "imported from released files" in audit.stdout
    for name, task, kept, bad in (
        ("jsonl", "edit_execution", 4, 4),
        ("parquet", "edit_execution", 2, 1),
        ("json", "edit_consistency", 4, 1),
    ):
        path = files[name]
        size = path.stat().st_size
        line = (
            f"    {task}: {path} sha256 {_sha(path)} ({size} bytes; {kept} records kept, {bad} quarantined)"
        )
        assert line in audit.stdout.splitlines()
    dataset_audit = _firm(home, "audit", "dataset", f"firm_edit@{version[:8]}")
    assert f"sha256 {_sha(files['json'])}" in dataset_audit.stdout

    # a version that is not registered, or lacks a task the critic trains on, fails the run with a reason
    code, out = _import("firm_edit", "--task", "edit_execution", str(files["jsonl"]))
    assert code == 0, out
    execution_only = out.split(" version ")[1].split()[0]
    for chosen, reason in (
        ("ffff", "matches 0 versions of firm_edit"),
        (execution_only, "holds no edit_consistency records"),
    ):
        bad = {"ops": {"firm_edit_critic": {"config": {**RECIPE, "dataset_version": chosen}}}}
        failed = materialize(
            [unregistered_upstream, firm_edit_critic],
            resources=build_resources(),
            run_config=bad,
            raise_on_error=False,
        )
        assert not failed.success
        assert reason in str(failed.get_step_failure_events()[0].event_specific_data.error)


def test_the_bench_reads_an_imported_version(imported, monkeypatch) -> None:
    """The bench's gates on a critic trained on an imported version: no label columns, so no constant
    baseline (a reason, not a crash); contamination by image hash and by a prompt holding the text."""
    home, version = imported["home"], imported["version"]
    monkeypatch.setenv("FIRM_HOME", str(home))
    warehouse = Warehouse(warehouse_path())
    with pytest.raises(BaselineUnavailable, match="has no execution_score, consistency_score labels"):
        median_labels(warehouse, "firm_edit", version)
    black = hashlib.sha256(_png("black")).hexdigest()
    with warehouse.transaction() as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS assets")
        con.execute(
            "CREATE TABLE assets.firm_bench_edit (item_id VARCHAR, text VARCHAR, image_shas VARCHAR[])"
        )
        con.executemany(
            "INSERT INTO assets.firm_bench_edit VALUES (?, ?, ?)",
            [
                ("by-image", "Turn it upside down.", [black, "0" * 64]),
                ("by-text", " make it GREEN. ", ["1" * 64]),
                ("clean", "Make it pink.", ["2" * 64]),  # its record was quarantined
            ],
        )
    assert sorted(contaminated_items(warehouse, "firm_edit", version)) == ["by-image", "by-text"]


def test_an_import_keeps_only_kept_records_images_and_refuses_a_task_left_empty(
    firm_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record quarantined by its second image leaves its first out of the version; a task whose
    every record is quarantined fails the import with nothing registered (a critic would otherwise
    train on the other task alone); the same files under another media folder are another import."""
    release = tmp_path / "release"
    (release / "images").mkdir(parents=True)
    for colour in ("white", "red", "orange"):
        (release / "images" / f"{colour}.png").write_bytes(_png(colour))
    good = {
        "messages": _messages("<image><image>Make it red.", _answer(1)),
        "images": ["images/white.png", "images/red.png"],
    }
    half = {
        "messages": _messages("<image><image>Make it pink.", _answer(2)),
        "images": ["images/orange.png", "images/pink.png"],
    }
    execution = release / "execution.jsonl"
    execution.write_text(json.dumps(good) + "\n" + json.dumps(half) + "\n")
    bad_only = release / "consistency.jsonl"
    bad_only.write_text(json.dumps(half) + "\n")
    consistency = release / "consistency-good.jsonl"
    consistency.write_text(json.dumps(good) + "\n")

    def edit_import(consistency_file: Path) -> list[str]:
        tasks = ["--task", "edit_execution", str(execution), "--task", "edit_consistency"]
        return ["firm_edit", *tasks, str(consistency_file)]

    assert main(["import-dataset", *edit_import(bad_only)]) == 1
    assert "no record of task edit_consistency could be imported" in capsys.readouterr().err
    warehouse = Warehouse(warehouse_path())
    assert warehouse.rows("SELECT count(*) FROM dataset_versions") == [(0,)]
    assert warehouse.rows("SELECT count(*) FROM quarantine") == [(0,)]

    args = edit_import(consistency)
    code, out = _import(*args)
    assert code == 0, out
    version = out.split(" version ")[1].split()[0]
    stored = {path.name for path in (firm_home / "datasets" / "firm_edit" / version / "images").iterdir()}
    orange = hashlib.sha256((release / "images" / "orange.png").read_bytes()).hexdigest()
    assert len(stored) == 2 and not any(name.startswith(orange) for name in stored), stored

    media = tmp_path / "media"
    shutil.copytree(release / "images", media / "images")
    (media / "images" / "pink.png").write_bytes(_png("pink"))
    code, out = _import(*args, "--media-dir", str(media))
    assert code == 0, out
    assert out.split(" version ")[1].split()[0] != version
    assert "records edit_consistency 1, edit_execution 2;" in out
