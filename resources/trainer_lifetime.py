"""A trainer dies with the run that launched it.

Both trainers (critic SFT and RL) run as Pipes subprocesses of a Dagster run process. Killed with
SIGKILL, that process cannot stop them, and they (with their DataLoader workers, or the ranks of an
`accelerate launch`) trained on for minutes while the run was already marked failed. So every
trainer command is started under this small supervisor (`supervised(command)`), which:

- puts itself and everything it starts in a process group of its own;
- asks Linux to send it SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`; elsewhere a thread
  watches the parent's pid), and then kills its whole group;
- forwards SIGINT/SIGTERM from Dagster (a cancelled run) to the trainer, and when the trainer ends,
  ends what it left in the group (a DataLoader worker) before exiting with the trainer's code.

No library does this for an arbitrary command (subprocess and Dagster's Pipes client start the
process, they do not tie its descendants to the parent's life), hence these few lines. Standard
library only: it starts in milliseconds and imports nothing of the project.

  python -m resources.trainer_lifetime --parent <pid> -- <command...>
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STRAGGLER_GRACE_S = 5.0


def supervised(command: Sequence[str]) -> list[str]:
    """`command` run under the supervisor, tied to the life of this (the launching) process."""
    return [sys.executable, "-m", "resources.trainer_lifetime", "--parent", str(os.getpid()), "--", *command]


def _die_with_parent(parent: int) -> None:
    """SIGTERM to this process when `parent` dies: the kernel's parent-death signal on Linux, a
    watching thread elsewhere; a parent already gone is the same signal now."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _end_group(signum: int = signal.SIGKILL) -> None:
    """Signal every process of this group but this one (SIGKILL: this one too)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.killpg(os.getpgid(0), signum)


def run(parent: int, command: Sequence[str]) -> int:
    """Runs the trainer in its own process group and ends it when the parent dies."""
    os.setpgid(0, 0)
    trainer: subprocess.Popen | None = None

    def on_parent_death(signum: int, frame: object) -> None:
        _end_group(signal.SIGKILL)

    def on_interrupt(signum: int, frame: object) -> None:
        if trainer is not None:
            trainer.send_signal(signum)  # a cancelled run: let the trainer stop the way it knows

    signal.signal(signal.SIGTERM, on_parent_death)
    signal.signal(signal.SIGINT, on_interrupt)
    _die_with_parent(parent)
    trainer = subprocess.Popen(list(command))
    code = trainer.wait()
    _end_group(signal.SIGTERM)  # what the trainer left behind (a DataLoader worker)
    time.sleep(0.05)
    deadline = time.monotonic() + STRAGGLER_GRACE_S
    while _others_in_group() and time.monotonic() < deadline:
        time.sleep(0.1)
    if _others_in_group():
        _end_group(signal.SIGKILL)
    return code


def _others_in_group() -> bool:
    """Whether a live process other than this one is in this process group (Linux /proc; elsewhere
    the SIGTERM above is all)."""
    group, me = os.getpgid(0), os.getpid()
    if not os.path.isdir("/proc"):
        return False
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def main() -> None:
    """Entry point of the wrapper that ties a trainer's life to its parent's."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parent", type=int, required=True, help="pid whose death ends the command")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    sys.exit(run(args.parent, command))


if __name__ == "__main__":
    main()
