"""The Dagster webserver loads the code location from workspace.yaml and serves the graph over its
real GraphQL API (what the UI reads)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
QUERY = "{ assetNodes { assetKey { path } groupName opVersion } }"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_webserver_serves_the_asset_graph(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "FIRM_HOME": str(tmp_path / "home")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)],
    )
    try:
        nodes = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and nodes is None:
            try:
                reply = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": QUERY}, timeout=10)
                nodes = reply.json()["data"]["assetNodes"]
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                time.sleep(1)
        assert nodes is not None, "the webserver did not answer"
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        assert {"edit_scores", "gen_scores", "firm_edit_critic", "bench_results"} <= set(by_key)
        assert by_key["edit_scores"]["groupName"] == "edit"
        assert by_key["difference_captions"]["opVersion"].startswith("difference_caption@1#")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
