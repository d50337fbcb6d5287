"""A `firm serve` process on a free loopback port, for the tests and the bench scripts that need a
real server process (not the in-process app of `loopback.py`). Light on imports, so a bench's
client process stays small."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port nothing listens on (free when asked; the caller binds it soon after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serve(
    critic: Path,
    port: int,
    options: list[str],
    env: dict[str, str] | None = None,
    stderr: int = subprocess.DEVNULL,
) -> subprocess.Popen:
    """`firm serve --critic CRITIC --port PORT OPTIONS` from this checkout, `env` over this process's;
    `stderr=subprocess.PIPE` keeps its errors for `wait_healthy` to show."""
    command = [sys.executable, "-m", "firm_assets.cli", "serve", "--critic", str(critic), "--port", str(port)]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": path, **(env or {})}
    return subprocess.Popen(
        [*command, *options], cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=stderr
    )


def wait_healthy(base_url: str, server: subprocess.Popen, timeout_s: float) -> None:
    """Poll the server's /healthz until it answers 200 (its critic loaded); raise when the process
    exits first (with the end of its stderr, when piped) or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            errors = server.stderr.read().decode()[-3000:] if server.stderr else ""
            raise RuntimeError(f"the server exited:\n{errors}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/healthz").status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{base_url} did not become healthy in {timeout_s} s")
