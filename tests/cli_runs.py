"""`firm` as a user runs it: the real CLI in its own process, from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def firm(
    *args: str, home: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`firm ARGS` with this environment (`env`, else the test's own), its FIRM_HOME `home` when given;
    output captured as text."""
    run_env = dict(os.environ if env is None else env)
    if home is not None:
        run_env["FIRM_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "firm_assets.cli", *args],
        cwd=REPO,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
