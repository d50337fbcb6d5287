"""The `firm` command: build the tiny models, run the main job, print where everything landed."""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from firm_assets.serving.command import add_serve_parser
from resources.home import firm_home

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from warehouse.connection import Warehouse


# Written into the dagster.yaml of an instance the CLI creates: default storage, and telemetry decided
# (off: the project runs offline), so Dagster does not print its first-use banner into a run's output.
INSTANCE_CONFIG = """# Default storage: SQLite files in this folder.
# Dagster's usage statistics; set `enabled: true` to send them.
telemetry:
  enabled: false
"""
# Set for a run without -v, before the libraries are imported (children such as a Pipes trainer
# inherit them): no tqdm bars (model loading, shard writing), no library warnings or INFO logs.
QUIET_ENVIRONMENT = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "PYTHONWARNINGS": "ignore",
}


def _dagster_home() -> str:
    """Runs go to a persistent instance under FIRM_HOME so `dagster dev` shows them afterwards."""
    home = os.environ.setdefault("DAGSTER_HOME", str(firm_home() / "dagster"))
    os.makedirs(home, exist_ok=True)
    config = os.path.join(home, "dagster.yaml")
    if not os.path.exists(config):
        with open(config, "w") as handle:
            handle.write(INSTANCE_CONFIG)
    return home


def quiet_libraries() -> None:
    """Only the project's lines on a run's console: the environment above (a variable the user set
    keeps its value) and Python's warnings off in this process."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    warnings.simplefilter("ignore")


def job_names() -> dict[str, str]:
    """Every job `firm run` takes, with its description."""
    from jobs.curation import JOBS

    return {job.name: job.description or "" for job in JOBS}


def build_tiny(_: argparse.Namespace) -> int:
    """`firm build-tiny`: builds the tiny test models ahead of a first run."""
    from resources.models import ensure_tiny_models

    print(f"tiny models in {ensure_tiny_models()}")
    return 0


def _instance(dagster_home: str):
    """The persistent Dagster instance; its SQLite storage is created under a lock, because two
    runs starting at once on a new DAGSTER_HOME would otherwise race to create the same tables."""
    from dagster import AssetKey, DagsterInstance

    with open(os.path.join(dagster_home, "instance.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            instance = DagsterInstance.get()
            instance.get_runs(limit=1)  # opens (and on first use creates) each storage
            instance.fetch_materializations(AssetKey("firm"), limit=1)
            instance.all_instigator_state()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return instance


def read_run_config(path: str) -> dict:
    """Run config from a YAML file in Dagster's shape (`ops: {asset: {config: ...}}`, `resources:`)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read run config {path}: {error}") from error
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"run config {path} must be a mapping, not {type(config).__name__}")
    return config


def run_job(args: argparse.Namespace) -> int:
    """Materialize the named job on the active profile, printing one line per finished step, then a
    summary. Runs left STARTED by a process that died are marked failed first."""
    dagster_home = _dagster_home()
    try:
        run_config = read_run_config(args.config) if args.config else {}
    except ValueError as error:
        print(f"firm run: {error}", file=sys.stderr)
        return 2
    if args.profiles:
        from resources.profiles import PROFILES_FILE_ENV

        if not os.path.isfile(args.profiles):
            print(f"firm run: no profiles file {args.profiles}", file=sys.stderr)
            return 2
        os.environ[PROFILES_FILE_ENV] = os.path.abspath(args.profiles)
    if not args.verbose:
        quiet_libraries()
    from dagster import DagsterInvalidConfigError

    from firm_assets.definitions import defs
    from firm_assets.run_progress import ProgressView, with_console_level
    from firm_assets.run_sweep import owner_tags
    from resources.home import warehouse_path
    from resources.models import ensure_tiny_models
    from warehouse.connection import Warehouse, WarehouseBusy
    from warehouse.summary import print_summary

    ensure_tiny_models()
    try:
        # Created and migrated up front, so the read-only summary can open it however the run ends.
        Warehouse(warehouse_path()).rows("SELECT 1")
    except WarehouseBusy as error:
        print(f"firm run: {error}", file=sys.stderr)
        return 2
    instance = _instance(dagster_home)
    _print_swept(instance)
    run_id = str(uuid.uuid4())
    instance.add_event_listener(run_id, ProgressView(write=lambda line: print(line, flush=True)))
    try:
        result = defs.resolve_job_def(args.job).execute_in_process(
            run_config=with_console_level(run_config, args.verbose),
            instance=instance,
            raise_on_error=False,
            run_id=run_id,
            tags=owner_tags(),
        )
    except DagsterInvalidConfigError as error:
        print(f"firm run: run config rejected: {error}", file=sys.stderr)
        return 2
    try:
        print_summary(result, dagster_home)
    except WarehouseBusy as error:
        print(f"firm run: no summary: {error}", file=sys.stderr)
    return 0 if result.success else 1


def _print_swept(instance: DagsterInstance) -> int:
    from firm_assets.run_sweep import sweep_dead_runs

    swept = sweep_dead_runs(instance)
    for run in swept:
        print(f"marked failed: run {run.run_id} ({run.job_name}), its process {run.pid} is gone")
    return len(swept)


def sweep_runs(_: argparse.Namespace) -> int:
    """Mark failed every run left STARTING/STARTED by a process of this host that is gone."""
    swept = _print_swept(_instance(_dagster_home()))
    print(f"{swept} dead run(s) marked failed")
    return 0


def audit(args: argparse.Namespace) -> int:
    """Answer a lineage question from the warehouse; exit 1 when nothing matches, 2 when the warehouse
    is missing or a running job kept it locked for longer than FIRM_WAREHOUSE_WAIT_S."""
    from resources.home import warehouse_path
    from warehouse.connection import Warehouse, WarehouseBusy

    try:
        return _audit(Warehouse(warehouse_path(), read_only=True), args)
    except (WarehouseBusy, FileNotFoundError) as error:
        print(f"firm audit: {error}", file=sys.stderr)
        return 2


def _audit(warehouse: Warehouse, args: argparse.Namespace) -> int:
    from warehouse.lineage import (
        critic_report,
        dataset_report,
        find_critic_versions,
        find_dataset_versions,
        find_policy_versions,
        imported_files,
        policy_prompts,
        policy_report,
        sample_critics,
        sample_memberships,
    )

    if args.kind == "dataset":
        versions = find_dataset_versions(warehouse, args.ref)
        for row in versions.iter_rows(named=True):
            print(dataset_report(row, imported_files(warehouse, row["dataset"], row["version"])))
        return 0 if versions.height else 1
    if args.kind == "critic":
        critics = find_critic_versions(warehouse, args.ref)
        for row in critics.iter_rows(named=True):
            print(critic_report(row, imported_files(warehouse, row["dataset"], row["dataset_version"])))
        return 0 if critics.height else 1
    if args.kind == "policy":
        policies = find_policy_versions(warehouse, args.ref)
        for row in policies.iter_rows(named=True):
            print(policy_report(row, policy_prompts(warehouse, row["prompt_set"], row["prompt_set_version"])))
        return 0 if policies.height else 1
    memberships = sample_memberships(warehouse, args.ref)
    print(f"sample {args.ref}: in {memberships.height} dataset version(s)")
    for row in memberships.iter_rows(named=True):
        print(f"  {row['dataset']} {row['version']} (source {row['source']}, {row['created_at']})")
    critics = sample_critics(warehouse, args.ref)
    print(f"  trained {critics.height} critic version(s)")
    for row in critics.iter_rows(named=True):
        trained_on = f"dataset {row['dataset']} {row['dataset_version']}"
        print(f"  critic {row['critic']} {row['version']} ({trained_on}, {row['created_at']})")
    return 0 if memberships.height else 1


def import_dataset(args: argparse.Namespace) -> int:
    """`firm import-dataset`: released LLaMA-Factory ShareGPT files as a dataset version a critic can
    train on (`critics/released.py`); prints the version, what was kept and what was quarantined.
    Exit 1 when the files cannot be imported (a task the dataset lacks, a file unreadable or given
    twice, no record kept), 2 for an unknown dataset or a busy warehouse."""
    from firm_assets.critics.assets import EDIT_CRITIC, GEN_CRITIC
    from firm_assets.critics.released import import_released
    from resources.home import warehouse_path
    from warehouse.connection import Warehouse, WarehouseBusy

    specs = {spec.dataset: spec for spec in (EDIT_CRITIC, GEN_CRITIC)}
    if args.dataset not in specs:
        print(f"firm import-dataset: no dataset {args.dataset!r}; one of {', '.join(specs)}", file=sys.stderr)
        return 2
    spec = specs[args.dataset]
    files = []
    for task, *paths in args.task:
        if not paths:
            print(f"firm import-dataset: --task {task} names no file", file=sys.stderr)
            return 2
        files += [(task, Path(path)) for path in paths]
    media_dir = Path(args.media_dir) if args.media_dir else None
    try:
        imported = import_released(args.dataset, files, spec.tasks, Warehouse(warehouse_path()), media_dir)
    except WarehouseBusy as error:
        print(f"firm import-dataset: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"firm import-dataset: {error}", file=sys.stderr)
        return 1
    kept = ", ".join(f"{task} {count}" for task, count in sorted(imported.records.items()))
    state = "imported" if imported.new else "already imported"
    print(f"{imported.dataset} version {imported.version} {state}: records {kept}; {imported.folder}")
    for row in imported.quarantined:
        print(f"  quarantined {row.source} {row.locator}: {row.reason}")
    run_config = f"ops: {{{spec.name}: {{config: {{dataset_version: '{imported.version}'}}}}}}"
    print(f"train {spec.name} on it with this run config (firm run -c FILE): {run_config}")
    return 0


def cost(args: argparse.Namespace) -> int:
    """Print what model-calling materializations cost, per asset and data version and per model; exit 1
    when nothing matches, 2 when the warehouse is missing, busy or older than cost accounting."""
    import duckdb

    from resources.home import warehouse_path
    from warehouse.connection import Warehouse, WarehouseBusy
    from warehouse.costs import asset_summary, cost_report, model_summary

    warehouse = Warehouse(warehouse_path(), read_only=True)
    try:
        assets = asset_summary(warehouse, args.asset, args.run)
        models = model_summary(warehouse, args.asset, args.run)
    except (WarehouseBusy, FileNotFoundError) as error:
        print(f"firm cost: {error}", file=sys.stderr)
        return 2
    except duckdb.CatalogException:
        print("firm cost: this warehouse has no cost tables yet (run a job to migrate it)", file=sys.stderr)
        return 2
    if not assets.height:
        print("firm cost: no recorded cost matches", file=sys.stderr)
        return 1
    print(cost_report(assets, models))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `firm` command."""
    argv = sys.argv[1:] if argv is None else argv
    # the job list imports Dagster (a second): only `firm run` and the help need it, not `firm audit`
    jobs = job_names() if not argv or argv[0] in ("run", "-h", "--help") else {}
    listing = "\n".join(f"  {name:14} {description}" for name, description in jobs.items())
    parser = argparse.ArgumentParser(
        prog="firm",
        description=__doc__,
        epilog=f"jobs (firm run JOB):\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build-tiny", help="build the tiny offline models under FIRM_HOME").set_defaults(
        func=build_tiny
    )
    run = commands.add_parser(
        "run",
        help="materialize a job (default: main, every asset)",
        epilog=f"jobs:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "job", nargs="?", default="main", choices=jobs, metavar="JOB", help="one of the jobs below"
    )
    run.add_argument("-c", "--config", default="", help="run config YAML (Dagster's shape: ops:, resources:)")
    run.add_argument(
        "--profiles", default="", help="your profiles YAML, laid over the packaged ones (FIRM_PROFILES_FILE)"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="also print Dagster's DEBUG event stream")
    run.set_defaults(func=run_job)
    runs = commands.add_parser("runs", help="run hygiene").add_subparsers(dest="action", required=True)
    runs.add_parser(
        "sweep", help="mark failed the runs left Started by a process that died (also done by every run)"
    ).set_defaults(func=sweep_runs)
    audit_parser = commands.add_parser(
        "audit",
        help="lineage: what produced a dataset or a critic; which critic, data and prompts trained a"
        " policy; where a sample went",
    )
    audit_parser.add_argument("kind", choices=("dataset", "critic", "policy", "sample"))
    audit_parser.add_argument(
        "ref", help="dataset, critic or policy name, name@version-prefix or version prefix; or a sample id"
    )
    audit_parser.add_argument(
        "--version",
        default="",
        help="version prefix of the named dataset, critic or policy (same as name@prefix)",
    )
    audit_parser.set_defaults(func=audit)
    import_parser = commands.add_parser(
        "import-dataset",
        help="import released LLaMA-Factory ShareGPT files (JSON, JSONL, Parquet) as a dataset version",
    )
    import_parser.add_argument("dataset", help="firm_edit or firm_gen")
    import_parser.add_argument(
        "--task",
        nargs="+",
        action="append",
        required=True,
        metavar="TASK FILE",
        help="an SFT task of the dataset and the file(s) that hold it, e.g. --task edit_execution"
        " a.parquet b.parquet (repeat for each task)",
    )
    import_parser.add_argument(
        "--media-dir", default="", help="folder image paths are relative to (default: each file's folder)"
    )
    import_parser.set_defaults(func=import_dataset)
    cost_parser = commands.add_parser(
        "cost", help="model calls, seconds, tokens and images per asset and data version, and per model"
    )
    cost_parser.add_argument("--asset", default="", help="one asset key, e.g. edit_scores")
    cost_parser.add_argument("--run", default="", help="one Dagster run id (or its prefix)")
    cost_parser.set_defaults(func=cost)
    add_serve_parser(commands)
    args = parser.parse_args(argv)
    if getattr(args, "version", ""):
        if args.kind == "sample":
            parser.error("--version names a version of a dataset, critic or policy, not of a sample")
        args.ref = f"{args.ref}@{args.version}"
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
