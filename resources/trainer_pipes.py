"""The Pipes client both trainers are launched through (critic SFT and RL): Dagster's subprocess
client, with every command run under `trainer_lifetime`'s supervisor so the trainer and everything
it starts die with the run process that launched them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagster import PipesClientCompletedInvocation, PipesSubprocessClient

from resources.trainer_lifetime import supervised


class TrainerPipesClient(PipesSubprocessClient):
    """Pipes client whose trainers die with the Dagster process that launched them."""

    def run(self, *, command: str | Sequence[str], **kwargs: Any) -> PipesClientCompletedInvocation:  # type: ignore[override]
        """Runs the command under the lifetime wrapper, so no trainer outlives its run."""
        argv = [command] if isinstance(command, str) else list(command)
        return super().run(command=supervised(argv), **kwargs)
