"""The code location's default executor, chosen by the environment of the deployment.

Locally every selection runs in one process (`in_process`), so a UI button, a backfill or a sensor
loads each model once per run. A cluster sets FIRM_EXECUTOR=k8s (one pod per step, GPUs requested
per step) or celery (workers on a queue), and FIRM_EXECUTOR_CONFIG to a YAML file of that executor's
config (deploy/k8s/executor.yaml, deploy/celery/executor.yaml), applied to every run, UI-launched
ones included. The cluster executors come from the `deploy` extra and are imported only when chosen.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from dagster import ExecutorDefinition, in_process_executor

# name -> (module, attribute, pip extra that provides it)
CLUSTER_EXECUTORS = {
    "k8s": ("dagster_k8s", "k8s_job_executor", "deploy"),
    "celery": ("dagster_celery", "celery_executor", "deploy"),
}
DEFAULT_EXECUTOR = "in_process"


def executor_named(name: str) -> ExecutorDefinition:
    """The executor definition for `name`; a clear error for an unknown name or a missing extra."""
    if name == DEFAULT_EXECUTOR:
        return in_process_executor
    if name not in CLUSTER_EXECUTORS:
        known = sorted([DEFAULT_EXECUTOR, *CLUSTER_EXECUTORS])
        raise ValueError(f"FIRM_EXECUTOR={name!r} is not an executor this project ships; known: {known}")
    module, attribute, extra = CLUSTER_EXECUTORS[name]
    try:
        return getattr(importlib.import_module(module), attribute)
    except ImportError as error:
        raise ImportError(f"FIRM_EXECUTOR={name} needs {module}: pip install -e '.[{extra}]'") from error


def executor_from_env(environ: Mapping[str, str] = os.environ) -> ExecutorDefinition:
    """FIRM_EXECUTOR's executor (default in_process), configured from FIRM_EXECUTOR_CONFIG if set."""
    executor = executor_named(environ.get("FIRM_EXECUTOR", DEFAULT_EXECUTOR))
    config_path = environ.get("FIRM_EXECUTOR_CONFIG")
    if not config_path:
        return executor
    config = yaml.safe_load(Path(config_path).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"FIRM_EXECUTOR_CONFIG={config_path} must hold a mapping of executor config")
    return executor.configured(config, name=executor.name)
