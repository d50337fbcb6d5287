"""Critic SFT on 2 processes for real (gloo on the CPU), launched the way the product launches it:
`firm_edit_critic` with run config `accelerate_config: ddp_cpu_2proc` (torch DDP) or
`fsdp2_cpu_2proc` (FSDP2 full shard, accelerate's FSDP2 path on a CPU group). With the same global
batch and seed each loss curve equals a 1-process run's (2 rows a batch there, 1 a rank here); the
weights (FSDP2: gathered from the shards) register once and score through `score_with_critic`;
MLflow gets one point per update; a setting that does not change the weights finds the same
version. A launcher killed with SIGKILL (with its workers, as a lost job is) resumes from its
checkpoint (FSDP2: one shard per rank, torch.distributed.checkpoint) to the same losses, and the
killed run's MLflow curve holds the points made before the kill.

The upstream `firm_edit_dataset` is stood in for by a small asset that writes a real export with the
project's ShareGPT writer and registers it as a dataset version (curation is tested elsewhere)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from dagster import Output, asset, materialize
from mlflow import MlflowClient
from PIL import Image
from safetensors.torch import load_file

from firm_assets.critics.assets import firm_edit_critic
from firm_assets.critics.inference import score_with_critic, tasks_for
from firm_assets.critics.launch import TRAIN_MODULE
from firm_assets.critics.recipe import CriticTrainingConfig, launch_prefix
from firm_assets.critics.scoring import CriticScorer
from firm_assets.curation.dataset import register_version
from firm_assets.curation.sharegpt import index_exports, sharegpt_record, write_tasks
from firm_assets.definitions import build_resources
from resources.home import warehouse_path
from resources.tracking import TrackingResource, default_tracking_uri
from resources.transformers_backend import TransformersBackend
from warehouse.connection import Warehouse

REPO = Path(__file__).resolve().parent.parent
VERSION = "released0001"
# 8 execution records and 1 consistency record: one held out for validation, 8 trained on one a
# micro-batch, 4 updates an epoch
COLOURS = ("red", "blue", "green", "white", "black", "yellow", "orange", "purple", "pink")
# a pixel budget below the tiny processor's own 4096, to see it reach the registered critic
RECIPE = {
    "per_device_batch_size": 1,
    "epochs": 2,
    "dataloader_workers": 0,
    "learning_rate": 0.003,
    "image_max_pixels": 2048,
}
TOLERANCE = 1e-5  # absolute, per loss: the same sums in another order (fp32)
# absolute, per weight after 8 AdamW updates at lr 3e-3: Adam divides by the gradients' own scale,
# so a summation-order difference in a near-zero gradient moves a weight more than it moves a loss
WEIGHTS_TOLERANCE = 1e-4
pytestmark = pytest.mark.timeout(900)


def _export(root: Path) -> Path:
    """firm_edit's two SFT tasks as the publisher writes them, one version folder."""
    folder = root / "firm_edit" / VERSION
    if folder.exists():  # a later run: the version is published already
        return folder
    (folder / "images").mkdir(parents=True)
    records = []
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (64, 64), colour).save(folder / "images" / f"{i}.png")
        # answers of different lengths, so a token-level mean differs from a mean of row means
        reasoning = " ".join([f"the edit made it {colour}"] * (1 + i % 3))
        answer = json.dumps({"reasoning": reasoning, "score": 1 + i % 5})
        images = [f"firm_edit/{VERSION}/images/{i}.png"] * 2
        records.append(sharegpt_record("You grade edits.", f"Make it {colour}.", images, answer))
    tasks = {"edit_execution": records[:-1], "edit_consistency": records[-1:]}
    write_tasks(folder, "firm_edit", VERSION, tasks)
    index_exports(root)
    return folder


@asset(name="firm_edit_dataset")
def stand_in_dataset() -> Output[pl.DataFrame]:
    folder = _export(Path(os.environ["FIRM_HOME"]) / "exports")
    frame = pl.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(COLOURS))],
            "source": ["test"] * len(COLOURS),
            "cache_keys": [[f"k{i}"] for i in range(len(COLOURS))],
            "dataset_version": [VERSION] * len(COLOURS),
        }
    )
    register_version(Warehouse(warehouse_path()), "firm_edit", VERSION, frame, {}, folder, None, None)
    return Output(frame)


def _materialize(**config):
    result = materialize(
        [stand_in_dataset, firm_edit_critic],
        resources=build_resources(),
        run_config={"ops": {"firm_edit_critic": {"config": {**RECIPE, **config}}}},
    )
    assert result.success
    return result.asset_materializations_for_node("firm_edit_critic")[0].metadata


def _run(command: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _summary(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _tree(pid: int) -> list[int]:
    """`pid` and every process below it (Linux /proc)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        for child in children:
            found += _tree(int(child))
    return found


def _params(folder: Path, params_file: Path, **recipe) -> Path:
    """The asset's parameters for another output folder and recipe, without its MLflow run."""
    params = json.loads(params_file.read_text())
    params.pop("mlflow")
    params.update(output_dir=str(folder / "critic"), checkpoint_dir=str(folder / "checkpoints"))
    params["recipe"].update(recipe)
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    return folder / "params.json"


def _home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, name: str) -> Path:
    """A FIRM_HOME of its own (one critic version registered in it), sharing the tiny models."""
    home = tmp_path_factory.mktemp(name) / "firm-home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny").symlink_to(tiny_model_dir)
    return home


@contextlib.contextmanager
def _at(home: Path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIRM_HOME", str(home))
        for name in ("FIRM_PROFILE", "MLFLOW_TRACKING_URI"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """The DDP materialization, and a 1-process run of the same global batch (its baseline, also the
    FSDP2 run's)."""
    home = _home(tmp_path_factory, tiny_model_dir, "ddp")
    with _at(home):
        metadata = _materialize(accelerate_config="ddp_cpu_2proc", gradient_accumulation_steps=1)
        (params_file,) = (home / "critics" / "firm_edit_critic").glob("*.params.json")
        # both ranks' rows in one micro-batch: answers of different lengths weigh by their tokens in
        # both runs only if the 2-process loss is normalised over both ranks' target tokens
        baseline = _params(home.parent / "one", params_file, per_device_batch_size=2)
        one = _summary(_run([sys.executable, "-m", TRAIN_MODULE, "--params", str(baseline)]))
        yield home, metadata, params_file, one


@pytest.fixture(scope="module")
def fsdp2_materialized(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """The FSDP2 materialization, in a home of its own (the launch config enters the version)."""
    home = _home(tmp_path_factory, tiny_model_dir, "fsdp2")
    with _at(home):
        return home, _materialize(accelerate_config="fsdp2_cpu_2proc", gradient_accumulation_steps=1)


def test_two_ddp_processes_match_one_and_write_once(two_processes, monkeypatch) -> None:
    home, metadata, _, one = two_processes
    monkeypatch.setenv("FIRM_HOME", str(home))
    assert metadata["ran_distributed_type"].value == "MULTI_CPU" and metadata["ran_num_processes"].value == 2
    assert one["ran"]["num_processes"] == 1 and one["updates"] == 8
    _written_once_and_scored(home, one)


def test_two_fsdp2_processes_match_one_and_write_once(two_processes, fsdp2_materialized, monkeypatch) -> None:
    """FSDP2 on gloo: the same curve as one process, and the full weights gathered from the shards
    (the 1-process run's, within WEIGHTS_TOLERANCE) load, register once and score."""
    ddp_home, _, _, one = two_processes
    home, metadata = fsdp2_materialized
    monkeypatch.setenv("FIRM_HOME", str(home))
    assert metadata["ran_distributed_type"].value == "FSDP" and metadata["ran_num_processes"].value == 2
    saved = _written_once_and_scored(home, one)
    assert saved["ran"]["gradient_checkpointing"] == "fsdp"
    sharded, whole = (
        load_file(folder / "model.safetensors")
        for folder in (saved["path"], ddp_home.parent / "one" / "critic")
    )
    assert sharded.keys() == whole.keys()
    assert all(sharded[name].shape == whole[name].shape for name in whole)
    assert max((sharded[name] - whole[name]).abs().max().item() for name in whole) < WEIGHTS_TOLERANCE


def _written_once_and_scored(home: Path, one: dict) -> dict:
    """The asserts a 2-process materialization in `home` passes against the 1-process run `one`:
    rank 0 alone wrote MLflow, the registry and the summary, the curves match, and the registered
    critic loads and scores. Returns the saved training summary with the critic's folder (`path`)."""
    warehouse = Warehouse(warehouse_path())
    (row,) = warehouse.query("SELECT * FROM critics").iter_rows(named=True)
    client = MlflowClient(default_tracking_uri())
    # rank 0 alone logged: one point per update and per validation, in order
    train = client.get_metric_history(row["mlflow_run_id"], "train_loss")
    assert [m.step for m in sorted(train, key=lambda m: m.step)] == list(range(1, 9))
    losses = [m.value for m in sorted(train, key=lambda m: m.step)]
    assert losses == pytest.approx(one["losses"], abs=TOLERANCE, rel=0)
    val = client.get_metric_history(row["mlflow_run_id"], "val_loss")
    assert [(m.step, pytest.approx(m.value, abs=TOLERANCE)) for m in val] == [
        tuple(v) for v in one["val_losses"]
    ]
    assert len(client.search_model_versions("name = 'firm_edit_critic'")) == 1
    saved = json.loads((Path(row["path"]) / "training_summary.json").read_text())
    assert saved["losses"] == losses and saved["ran"]["num_processes"] == 2

    # the 2-process weights load and score through the bench's path
    items = pl.DataFrame(
        {
            "item_id": ["a", "b"],
            "text": ["Make it red.", "Make it blue."],
            "images": [
                [str(p)] * 2 for p in sorted((home / "exports" / "firm_edit").glob("*/images/*.png"))[:2]
            ],
            "image_shas": [["sha-a", "sha-a"], ["sha-b", "sha-b"]],
        }
    )
    backend = TransformersBackend(row["path"])
    # the registered critic, as `firm serve` and RL load it, sizes images under its training budget
    served = CriticScorer.load("models:/firm_edit_critic/1", tracking_uri=default_tracking_uri())
    assert served.backend.processor.image_processor.size["longest_edge"] == 2048
    predictions, _ = score_with_critic(
        backend, tasks_for("edit")[0], items, warehouse, 48, 2, None, guided=True
    )
    assert predictions["failure"].to_list() == [None, None]
    assert all(1 <= score <= 5 for score in predictions["text_score"].to_list())
    return {**saved, "path": Path(row["path"])}


def test_a_setting_that_does_not_change_the_weights_keeps_the_version(two_processes, monkeypatch) -> None:
    home, metadata, _, _ = two_processes
    monkeypatch.setenv("FIRM_HOME", str(home))
    again = _materialize(
        accelerate_config="ddp_cpu_2proc", gradient_accumulation_steps=1, checkpoint_every=3, eval_every=5
    )
    assert again["trained"].value is False
    assert again["critic_version"].value == metadata["critic_version"].value


@pytest.mark.parametrize(
    ("accelerate_config", "distributed_type"), [("ddp_cpu_2proc", "MULTI_CPU"), ("fsdp2_cpu_2proc", "FSDP")]
)
def test_a_killed_launcher_resumes_from_its_checkpoint(
    two_processes, tmp_path: Path, monkeypatch, accelerate_config: str, distributed_type: str
) -> None:
    """SIGKILL to the launcher and every process under it (torchrun starts its workers in sessions
    of their own, so its process group is not enough) once the first checkpoint (update 2) is
    written; the relaunch resumes there and ends with the uninterrupted curve. FSDP2's checkpoint
    is sharded: each rank wrote its part of the weights and of the AdamW state, and read it back."""
    home, _, params_file, one = two_processes
    monkeypatch.setenv("FIRM_HOME", str(home))
    params = _params(tmp_path / "killed", params_file, gradient_accumulation_steps=1, checkpoint_every=2)
    tracking = TrackingResource()
    run_id = tracking.create_run("firm-critics", "killed", {})
    written = json.loads(params.read_text())
    written["mlflow"] = {"tracking_uri": tracking.uri(), "run_id": run_id}
    params.write_text(json.dumps(written))
    command = [
        *launch_prefix(CriticTrainingConfig(accelerate_config=accelerate_config), "full"),
        TRAIN_MODULE,
        "--params",
        str(params),
    ]
    launcher = _run(command)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / "step-00000002" / "trainer_state.json").exists():
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-3000:]
        time.sleep(0.05)
    for pid in _tree(launcher.pid):
        with contextlib.suppress(ProcessLookupError):  # one that ended meanwhile
            os.kill(pid, signal.SIGKILL)
    launcher.communicate(timeout=60)
    assert not (tmp_path / "killed" / "critic").exists()
    if distributed_type == "FSDP":
        written = checkpoints / "step-00000002"
        for state in ("pytorch_model_fsdp_0", "optimizer_0"):  # one shard per rank, no whole copy
            assert sorted(p.name for p in (written / state).glob("*.distcp")) == [
                "__0_0.distcp",
                "__1_0.distcp",
            ]
        assert not list(written.glob("*.safetensors"))
    # the killed run's curve is in MLflow up to where it died
    logged = MlflowClient(tracking.uri()).get_metric_history(run_id, "train_loss")
    assert len(logged) >= 2 and {m.step for m in logged} >= {1, 2}

    relaunch = _run(command)
    out, err = relaunch.communicate(timeout=600)
    assert relaunch.returncode == 0, err[-3000:]
    assert "resuming from step-00000002: epoch 0, update 2" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["ran"]["num_processes"], summary["ran"]["distributed_type"]) == (2, distributed_type)
    assert summary["losses"] == pytest.approx(one["losses"], abs=TOLERANCE, rel=0)
    assert not checkpoints.exists()


def test_an_fsdp_launch_of_one_cpu_process_is_refused(tmp_path: Path, tiny_models) -> None:
    """Without an accelerator device accelerate leaves FSDP off, and the trainer turns FSDP2 on only
    for a group of CPU processes: a single process, which would train unsharded without a word, is
    refused instead."""
    from test_train import _dataset
    from test_train import _params as train_params

    params = train_params(tmp_path, tiny_models["tiny-qwen3-vl"], _dataset(tmp_path / "exports"), epochs=1)
    run = subprocess.run(
        [sys.executable, "-m", TRAIN_MODULE, "--params", str(params)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0 and "asks for FSDP2, but accelerate runs NO here" in run.stderr
    assert not (tmp_path / "critic").exists()
