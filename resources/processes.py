"""Whether a process of this host still runs, for everything that records an owner pid: work claims,
image-store temp files, MLflow runs. Linux /proc is read for the details `os.kill` cannot tell."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which is in parentheses and may hold spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def process_alive(pid: int) -> bool:
    """Whether a process of this host is running (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    fields = _stat_fields(pid)
    return not fields or fields[0] not in ("Z", "X")


def process_start(pid: int) -> str:
    """The start time of process `pid` in clock ticks since boot, or "" when unknown: with the pid it
    names one process, even after the pid is reused."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else ""
