"""`dagster dev` (webserver, daemon, code server) on a free 127.0.0.1 port with its own FIRM_HOME and
DAGSTER_HOME, driven over the webserver's GraphQL API: what the UI does, without a mocked server.
Shared by the browser test and `bench/ui_materialize.py`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent

ASSET_NODES = """{ assetNodes { assetKey { path }
  repository { name location { name } }
  assetChecksOrError { ... on AssetChecks { checks { name } } } } }"""

LAUNCH = """mutation Launch($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }"""

RUN_STATUS = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

AssetPath = tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    """The assets (by key path) and asset checks (by asset key path and check name) a run executes."""

    assets: frozenset[AssetPath]
    checks: frozenset[tuple[AssetPath, str]]

    def differences(self, other: Selection) -> str:
        """What only this selection has and what only `other` has, for an error message."""
        mine = [*sorted(self.assets - other.assets), *sorted(self.checks - other.checks)]
        theirs = [*sorted(other.assets - self.assets), *sorted(other.checks - self.checks)]
        return f"only in this selection: {mine}; only in the other: {theirs}"


def job_selection(job_name: str) -> Selection:
    """What the code location's job executes, resolved from its Definitions (`firm run main` runs the
    `main` job): a UI launch meant to do the same work must select exactly this."""
    from firm_assets.definitions import defs

    layer = defs.resolve_job_def(job_name).asset_layer
    return Selection(
        assets=frozenset(tuple(key.path) for key in layer.selected_asset_keys),
        checks=frozenset((tuple(key.asset_key.path), key.name) for key in layer.asset_graph.asset_check_keys),
    )


def asset_path(node: dict[str, Any]) -> AssetPath:
    return tuple(node["assetKey"]["path"])


def node_selection(nodes: list[dict[str, Any]]) -> Selection:
    """The assets and checks a launch of these GraphQL asset nodes selects (`launch_assets`)."""
    return Selection(
        assets=frozenset(asset_path(node) for node in nodes),
        checks=frozenset(
            (asset_path(node), check["name"])
            for node in nodes
            for check in (node["assetChecksOrError"] or {}).get("checks", [])
        ),
    )


def job_nodes(nodes: list[dict[str, Any]], job_name: str) -> list[dict[str, Any]]:
    """The webserver's asset nodes in the job's selection (derived from its definition), in the
    webserver's order; a ValueError unless launching them, with the checks the webserver lists for
    them, selects exactly the assets and checks the job executes."""
    job = job_selection(job_name)
    chosen = [node for node in nodes if asset_path(node) in job.assets]
    launched = node_selection(chosen)
    if launched != job:
        raise ValueError(f"a launch of these nodes is not job {job_name}'s work: {launched.differences(job)}")
    return chosen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DagsterDev:
    """A running `dagster dev` for `workspace.yaml`; `stop` ends it and its children (Ctrl-C, then a
    TERM after 30 s)."""

    def __init__(self, firm_home: Path, log_path: Path) -> None:
        dagster_home = firm_home / "dagster"
        dagster_home.mkdir(parents=True, exist_ok=True)
        # no first-visit community dialog over the UI, no telemetry
        (dagster_home / "dagster.yaml").write_text("nux:\n  enabled: false\ntelemetry:\n  enabled: false\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "FIRM_HOME": str(firm_home), "DAGSTER_HOME": str(dagster_home)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self._log = log_path.open("w")
        command = ["dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "dagster", *command],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30)
        reply.raise_for_status()
        body = reply.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def wait_ready(self, timeout_s: float = 180) -> list[dict[str, Any]]:
        """The asset nodes, once the webserver answers with the code location loaded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self._process.returncode}")
            try:
                nodes = self.graphql(ASSET_NODES)["assetNodes"]
            except (httpx.HTTPError, RuntimeError, ValueError):
                nodes = []
            if nodes:
                return nodes
            time.sleep(1)
        raise TimeoutError(f"dagster dev did not serve the asset graph within {timeout_s} s")

    def launch_assets(self, nodes: list[dict[str, Any]]) -> str:
        """Launch the assets of `nodes` and their checks as the UI's Materialize button does: the
        implicit asset job, no run config; returns the run id."""
        repository = nodes[0]["repository"]
        selection = node_selection(nodes)
        selector = {
            "repositoryLocationName": repository["location"]["name"],
            "repositoryName": repository["name"],
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": list(path)} for path in sorted(selection.assets)],
            "assetCheckSelection": [
                {"assetKey": {"path": list(path)}, "name": name} for path, name in sorted(selection.checks)
            ],
        }
        result = self.graphql(LAUNCH, {"params": {"selector": selector, "mode": "default"}})
        launched = result["launchPipelineExecution"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launch refused: {launched}")
        return launched["run"]["runId"]

    def wait_run(self, run_id: str, timeout_s: float) -> str:
        """The run's final status (SUCCESS, FAILURE or CANCELED), polled every half second."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.graphql(RUN_STATUS, {"id": run_id})["runOrError"].get("status")
            if status in FINISHED:
                return status
            time.sleep(0.5)
        raise TimeoutError(f"run {run_id} did not finish within {timeout_s} s")

    def stop(self) -> None:
        """Ask `dagster dev` and its children to shut down (SIGINT, then SIGTERM) and, if they are still
        up after that, kill the process group: a slow shutdown on a busy machine must not fail a test
        whose checks have passed."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self._process.poll() is not None:
                break
            os.killpg(self._process.pid, sig)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                continue
        self._log.close()


def step_processes(dagster_home: Path, run_id: str) -> int:
    """How many distinct processes ran the run's steps (1 for an in-process run)."""
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        starts = instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
    return len({entry.dagster_event.pid for entry in starts})
