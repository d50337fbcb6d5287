"""The code location `workspace.yaml` loads: every asset, check, job, schedule and sensor."""

from __future__ import annotations

import os

from dagster import (
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from firm_assets.automation import automation_sensor
from firm_assets.benchmark import checks as bench_checks
from firm_assets.benchmark import items as bench_items
from firm_assets.benchmark import results as bench_results
from firm_assets.catalog import catalogued
from firm_assets.critics import assets as critic_assets
from firm_assets.edit import candidates, captions, dataset, requests, scores, source_images
from firm_assets.edit import checks as edit_checks
from firm_assets.edit import inbox as edit_inbox
from firm_assets.executors import executor_from_env
from firm_assets.gen import checklists, images, prompts
from firm_assets.gen import checks as gen_checks
from firm_assets.gen import dataset as gen_dataset
from firm_assets.gen import inbox as gen_inbox
from firm_assets.gen import scores as gen_scores
from firm_assets.rl import assets as rl_assets
from firm_assets.rl import checks as rl_checks
from jobs.curation import JOBS
from resources.models import ModelsResource
from resources.profiles import DEFAULT_PROFILE
from resources.tracking import TrackingResource
from resources.trainer_pipes import TrainerPipesClient
from resources.warehouse_resource import WarehouseIOManager, WarehouseResource
from sensors.inbox import edit_inbox_files, gen_inbox_files
from sensors.operations import bench_labels_changed, critic_registered, record_run_failures
from sensors.recuration import edit_requests_changed, nightly_edit_recuration

ASSET_MODULES = [
    requests,
    source_images,
    candidates,
    captions,
    scores,
    dataset,
    prompts,
    checklists,
    images,
    gen_scores,
    gen_dataset,
    critic_assets,
    bench_items,
    bench_results,
    rl_assets,
    edit_inbox,
    gen_inbox,
]


def build_resources() -> dict:
    """Resources from the environment: FIRM_PROFILE picks the models; paths default under FIRM_HOME."""
    return {
        "models": ModelsResource(profile=os.environ.get("FIRM_PROFILE", DEFAULT_PROFILE)),
        "warehouse": WarehouseResource(),
        "tracking": TrackingResource(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "")),
        "io_manager": WarehouseIOManager(),
        # trainers launched through it die with the run process (resources/trainer_lifetime.py)
        "pipes_subprocess_client": TrainerPipesClient(),
    }


ASSETS = catalogued(load_assets_from_modules(ASSET_MODULES))
CHECKS = load_asset_checks_from_modules([edit_checks, gen_checks, bench_checks, rl_checks])

defs = Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=list(JOBS),
    schedules=[nightly_edit_recuration],
    sensors=[
        edit_requests_changed,
        edit_inbox_files,
        gen_inbox_files,
        bench_labels_changed,
        critic_registered,
        record_run_failures,
        automation_sensor,
    ],
    resources=build_resources(),
    # Every job and selection (UI buttons, backfills, sensors) runs in one process unless the deployment
    # picks a cluster executor, so each model loads once per run rather than once per step.
    executor=executor_from_env(),
)
