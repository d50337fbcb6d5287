"""MLflow used the way its own tools read it back: datasets through `mlflow.data` (their source is
the version folder), critics as `mlflow.transformers` models loadable by `models:/` URI, every
artifact under FIRM_HOME, runs of killed processes ended as KILLED, one model version per critic
version even when two processes register at once. Real SQLite store, real processes, tiny real model."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.data
import mlflow.transformers
import polars as pl
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from transformers import AutoModelForImageTextToText

from firm_assets.critics.launch import critic_pipeline, pip_requirements
from resources.processes import process_start
from resources.tiny_models import VL_NAME
from resources.tracking import (
    ENDED_TAG,
    HOST_TAG,
    PID_START_TAG,
    PID_TAG,
    TrackingResource,
    default_tracking_uri,
    folder_dataset,
    owner_gone,
    process_tags,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh FIRM_HOME; MLflow's process-wide URI points at its store only while a test loads."""
    home = tmp_path / "firm-home"
    monkeypatch.setenv("FIRM_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield home
    mlflow.set_tracking_uri(None)


def _reaped_pid() -> int:
    """The pid of a process that has exited and been reaped (free, unless the kernel reuses it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_process_start_names_this_process_and_nothing_for_a_free_pid() -> None:
    mine = process_start(os.getpid())
    assert mine.isdigit() and process_start(os.getpid()) == mine
    assert process_start(_reaped_pid()) == ""
    assert process_tags() == {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), PID_START_TAG: mine}


def test_owner_gone_only_when_known_dead_on_this_host() -> None:
    host, me, started = socket.gethostname(), str(os.getpid()), process_start(os.getpid())
    dead = str(_reaped_pid())
    assert owner_gone({HOST_TAG: host, PID_TAG: dead, PID_START_TAG: "123"})
    assert owner_gone({HOST_TAG: host, PID_TAG: me, PID_START_TAG: str(int(started) + 1)})  # pid reused
    assert not owner_gone({HOST_TAG: host, PID_TAG: me, PID_START_TAG: started})
    assert not owner_gone({HOST_TAG: host, PID_TAG: me, PID_START_TAG: ""})  # alive, start unknown
    assert not owner_gone({HOST_TAG: host + "-elsewhere", PID_TAG: dead})  # cannot see other hosts
    assert not owner_gone({HOST_TAG: host, PID_TAG: "not-a-pid"})
    assert not owner_gone({})  # a run logged without owner tags


def test_dataset_input_resolves_to_the_version_folder(home: Path) -> None:
    folder = home / "datasets" / "firm_edit" / "v1"
    folder.mkdir(parents=True)
    frame = pl.DataFrame({"instruction": ["make it red", "add a hat"], "execution_score": [4.0, 2.0]})
    tracking = TrackingResource()
    run_id = tracking.log_run(
        "firm-curation",
        "firm_edit-v1",
        {},
        {},
        {},
        dataset=folder_dataset(frame, "firm_edit", "v1", str(folder)),
    )
    (dataset_input,) = MlflowClient(default_tracking_uri()).get_run(run_id).inputs.dataset_inputs
    assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("firm_edit", "v1")
    assert {tag.key: tag.value for tag in dataset_input.tags} == {"mlflow.data.context": "curation"}
    assert '"num_rows": 2' in dataset_input.dataset.profile
    source = mlflow.data.get_source(dataset_input.dataset)
    assert source.uri == str(folder)
    assert Path(source.load()) == folder  # a local source loads in place


def test_critic_registers_once_and_loads_by_models_uri_with_nothing_in_the_cwd(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path]
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    critic = str(tiny_models[VL_NAME])
    tracking = TrackingResource()
    run_id = tracking.create_run("firm-critics", "firm_edit_critic-a", {"dagster.run_id": "r1"})

    def register(critic_version: str, pipeline) -> str:
        tags = {"dataset_version": "d1", "critic_version": critic_version}
        return tracking.register_transformers_model(
            run_id, "firm_edit_critic", pipeline, tags, "critic_version", pip_requirements()
        )

    def must_not_load():
        raise AssertionError("an already registered critic version must not be logged again")

    assert register("a", lambda: critic_pipeline(critic)) == "1"
    assert register("a", must_not_load) == "1"
    tracking.finish(run_id)

    client = MlflowClient(default_tracking_uri())
    (version,) = client.search_model_versions("name = 'firm_edit_critic'")
    assert (version.run_id, version.tags["critic_version"]) == (run_id, "a")
    mlflow.set_tracking_uri(default_tracking_uri())
    # MLflow refuses a pipeline for a model saved with a multimodal processor (and transformers
    # cannot rebuild an image-text-to-text pipeline without it): components are the loading form
    with pytest.raises(MlflowException, match="return_type"):
        mlflow.transformers.load_model("models:/firm_edit_critic/1")
    components = mlflow.transformers.load_model("models:/firm_edit_critic/1", return_type="components")
    assert components["task"] == "image-text-to-text"
    assert type(components["processor"]).__name__ == "Qwen3VLProcessor"
    loaded = components["model"].state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(critic).state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[name], weights) for name, weights in trained.items())

    assert list(cwd.iterdir()) == []  # no mlruns/, mlflow.db or mlartifacts in the working directory
    artifacts = home / "mlflow" / "artifacts"
    for experiment in client.search_experiments():
        assert experiment.artifact_location.startswith(artifacts.as_uri()), experiment
    assert (artifacts / "firm-critics" / "models").is_dir()


def test_a_killed_run_is_ended_as_killed_by_the_next_run_of_its_experiment(home: Path) -> None:
    tracking = TrackingResource()
    alive = tracking.create_run("firm-critics", "still-training", {})  # owned by this live process
    killed = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from resources.tracking import TrackingResource; t = TrackingResource();"
            " print(t.create_run('firm-critics', 'doomed', {}), t.create_run('firm-bench', 'doomed', {}),"
            " flush=True); time.sleep(120)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    doomed, doomed_bench = killed.stdout.readline().split()
    killed.send_signal(signal.SIGKILL)  # mid-training: no chance to close its runs
    killed.wait()
    client = MlflowClient(default_tracking_uri())
    assert client.get_run(doomed).info.status == "RUNNING"

    tracking.create_run("firm-critics", "next", {})
    ended = client.get_run(doomed)
    assert ended.info.status == "KILLED" and ended.info.end_time is not None
    assert f"process {killed.pid} on {socket.gethostname()}" in ended.data.tags[ENDED_TAG]
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(doomed_bench).info.status == "RUNNING"  # another experiment: its next run
    tracking.create_run("firm-bench", "next", {})
    assert client.get_run(doomed_bench).info.status == "KILLED"


REGISTER_SCRIPT = """
import sys, time
from pathlib import Path
from firm_assets.critics.launch import critic_pipeline, pip_requirements
from resources.tracking import TrackingResource

critic, ready, go = sys.argv[1:4]
tracking = TrackingResource()
run_id = tracking.create_run("firm-critics", "concurrent", {})
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
tags = {"dataset_version": "d1", "critic_version": "same"}
version = tracking.register_transformers_model(
    run_id, "firm_edit_critic", lambda: critic_pipeline(critic), tags, "critic_version", pip_requirements()
)
tracking.finish(run_id)
print(version)
"""


def test_two_concurrent_first_runs_register_one_version(
    home: Path, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER_SCRIPT, str(tiny_models[VL_NAME]), str(flag), str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 240
    while not all(flag.exists() for flag in ready):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), [
            p.communicate()[1][-2000:] for p in processes if p.poll() is not None
        ]
        time.sleep(0.05)
    go.touch()  # both processes are past their imports and hold a run: register at once
    outputs = [p.communicate(timeout=240) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == ["1", "1"]
    client = MlflowClient(default_tracking_uri())
    (version,) = client.search_model_versions("name = 'firm_edit_critic'")
    assert version.tags["critic_version"] == "same"
