"""Trainers die with their run: real processes killed with SIGKILL.

A stand-in run process launches a trainer command (which starts a descendant of its own, like a
DataLoader worker) the way the Pipes client does; killing the run alone ends the supervised trainer
and its descendant, and (the control) leaves an unsupervised one running. Then the real thing:
`firm run` killed with SIGKILL while the critic trainer and its DataLoader worker train."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetExecutionContext, Output, asset, materialize

from resources.trainer_lifetime import supervised
from resources.trainer_pipes import TrainerPipesClient

REPO = Path(__file__).resolve().parent.parent

# The trainer stand-in: starts a long-lived child (its "worker"), records both pids, trains forever.
TRAINER = """
import json, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(json.dumps({"trainer": __import__("os").getpid(), "worker": worker.pid}))
time.sleep(600)
"""
# The run stand-in: launches argv[1:] and waits for it, as PipesSubprocessClient.run does.
RUN = "import subprocess, sys; subprocess.Popen(sys.argv[1:]).wait()"


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def wait_for_file(path: Path, timeout_s: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Pids to SIGKILL after the test, whatever happened (only processes this test started)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def start_run(trainer_command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN, *trainer_command], env={**os.environ, "PYTHONPATH": str(REPO)}
    )


def test_killing_the_run_ends_a_supervised_trainer_and_its_worker(tmp_path: Path, cleanup: list[int]) -> None:
    pids_file = tmp_path / "pids.json"
    # supervised() names the pid of the process that calls it; here the run stand-in launches it
    run = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, subprocess\nfrom resources.trainer_lifetime import supervised\n"
            "subprocess.Popen(supervised(sys.argv[1:])).wait()",
            sys.executable,
            "-c",
            TRAINER,
            str(pids_file),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    pids = wait_for_file(pids_file)
    cleanup += [pids["trainer"], pids["worker"]]
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert wait_gone([pids["trainer"], pids["worker"]], timeout_s=10) == []


def test_control_an_unsupervised_trainer_outlives_its_run(tmp_path: Path, cleanup: list[int]) -> None:
    pids_file = tmp_path / "pids.json"
    run = start_run([sys.executable, "-c", TRAINER, str(pids_file)])
    pids = wait_for_file(pids_file)
    cleanup += [pids["trainer"], pids["worker"]]
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert wait_gone([pids["trainer"], pids["worker"]], timeout_s=2) == [pids["trainer"], pids["worker"]]


def test_a_finished_trainer_leaves_nothing_behind_and_keeps_its_exit_code(
    tmp_path: Path, cleanup: list[int]
) -> None:
    """The trainer exits 3 leaving its worker running: the supervisor ends the worker and exits 3."""
    pids_file = tmp_path / "pids.json"
    trainer = TRAINER.replace("time.sleep(600)\n", "sys.exit(3)\n")  # the last line only
    done = subprocess.run(
        supervised([sys.executable, "-c", trainer, str(pids_file)]),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    pids = json.loads(pids_file.read_text())
    cleanup += [pids["trainer"], pids["worker"]]
    assert done.returncode == 3
    assert wait_gone([pids["worker"]], timeout_s=1) == []


def processes() -> dict[int, tuple[int, str]]:
    """Every live process: pid -> (parent pid, command line)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(int(entry)):
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            found[int(entry)] = (int(stat[1]), cmdline)
    return found


@pytest.mark.timeout(1500)
def test_killing_firm_run_ends_the_critic_trainer_and_its_dataloader_worker(
    gen_home: Path, cleanup: list[int]
) -> None:
    """`firm run main` on a copy of the session's curated gen home (no edit requests, so the gen
    chain's ten demo prompts are all it curates, from the cache), critics set to train for many
    epochs; once the critic trainer of this FIRM_HOME has its DataLoader worker, only the `firm run`
    process is killed with SIGKILL: within 30 s no process of the trainer remains. Only a real run
    shows that Pipes-launched trainers die with it."""
    firm_home = gen_home
    config = firm_home / "long_critics.yaml"
    critic = {"config": {"epochs": 500}}
    config.write_text(json.dumps({"ops": {"firm_edit_critic": critic, "firm_gen_critic": critic}}))
    no_requests = firm_home / "no_requests.jsonl"
    no_requests.write_text("")
    run = subprocess.Popen(
        [sys.executable, "-m", "firm_assets.cli", "run", "main", "-c", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "FIRM_EDIT_REQUESTS": str(no_requests)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cleanup.append(run.pid)
    deadline = time.monotonic() + 1400
    trainer = worker = None
    while worker is None and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before a critic trainer started"
        table = processes()
        trainers = [
            pid
            for pid, (_, cmd) in table.items()
            if "-m firm_assets.critics.train" in cmd
            and str(firm_home) in cmd
            and "trainer_lifetime" not in cmd
        ]
        for trainer in trainers:
            workers = [pid for pid, (parent, _) in table.items() if parent == trainer]
            if workers:
                worker = workers[0]
                break
        time.sleep(0.2)
    assert trainer is not None and worker is not None, "no critic trainer with a DataLoader worker appeared"
    supervisor = processes()[trainer][0]
    cleanup += [trainer, worker, supervisor]
    assert "trainer_lifetime" in processes()[supervisor][1]
    os.kill(run.pid, signal.SIGKILL)  # the run process only, not its group
    run.wait()
    assert wait_gone([trainer, worker, supervisor], timeout_s=30) == []


PIPES_CHILD = """
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    pipes.log.info("hello from the trainer")
    pipes.report_custom_message({"final_loss": 0.25})
"""


@asset
def trained(context: AssetExecutionContext, pipes_subprocess_client: TrainerPipesClient) -> Output:
    invocation = pipes_subprocess_client.run(
        context=context, command=[sys.executable, "-c", PIPES_CHILD], env={"PYTHONPATH": str(REPO)}
    )
    return Output(invocation.get_custom_messages())


@asset
def broken(context: AssetExecutionContext, pipes_subprocess_client: TrainerPipesClient) -> None:
    pipes_subprocess_client.run(context=context, command=[sys.executable, "-c", "raise SystemExit(4)"])


def test_pipes_messages_pass_through_the_supervisor() -> None:
    """An asset launching a Pipes child through TrainerPipesClient gets its custom message back, as
    the trainers' summaries come back; a failing child fails the asset."""
    resources = {"pipes_subprocess_client": TrainerPipesClient()}
    result = materialize([trained], resources=resources)
    assert result.success and list(result.output_for_node("trained")) == [{"final_loss": 0.25}]
    assert not materialize([broken], resources=resources, raise_on_error=False).success
