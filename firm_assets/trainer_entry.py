"""The entry of a trainer process: what both trainers (`critics/train.py`, `rl/train.py`) share when
`firm_assets/trainer_launch.py` launches them through Dagster Pipes (or a person runs them by hand).

Runs in the trainer's process. The parameters arrive in the JSON file `--params` names (every rank
can read it); rank 0 of a Pipes launch talks to Dagster (its log lines stream into the run, its
summary is the last custom message, which the launching asset takes), every other rank and a run by
hand print instead."""

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

Log = Callable[[str], None]
Report = Callable[[dict[str, Any]], None]


def read_params(description: str | None, written_by: str) -> dict[str, Any]:
    """The parameters from the file `--params` names (`written_by`: the asset that wrote it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--params", required=True, help=f"JSON file of parameters (written by the {written_by})"
    )
    return json.loads(Path(parser.parse_args().params).read_text())


def reports_to_dagster() -> bool:
    """Whether this process talks to Dagster: rank 0 (torchrun / accelerate launch set RANK) of a
    launch through Dagster Pipes."""
    return os.environ.get("RANK", "0") == "0" and DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ


def through_pipes(train: Callable[[Log, Report], Any]) -> Any:
    """Run `train(log, report)` with Dagster Pipes' log and custom-message channel."""
    with open_dagster_pipes() as pipes:
        return train(pipes.log.info, pipes.report_custom_message)
