"""P4: publishing at scale — the product's publish path for a 370,000-sample edit dataset version,
then the audits. No model calls.

Setup (a child process, not timed: the curation steps that fill these tables run in their own step
processes, so their memory is not this process's), under a temporary FIRM_HOME:
- `--images` distinct real 64x64 PNG files for sources and as many for edits (default 1,000 each),
  under FIRM_HOME/images/{sources,edits}/ with the same file names in both folders (so the export's
  name-clash rule runs); every sample points at one of them, so many samples share a file. The
  publisher links one file per distinct path (a hard link plus a chmod), so at the default this
  bench makes 2,000 links, where the paper's data (one edited image per sample) needs one per
  sample plus one per source: `--images 370000` measures that;
- four `inference_cache` rows per sample (edit_candidates, difference_captions, execution_scores,
  consistency_scores: 1.48M rows at the default n) with realistic model ids, revisions, template
  refs, decoding, parsed answers and three curation Dagster run ids, inserted as Arrow tables in the
  cache's row format (`CACHE_COLUMNS`);
- the rows of the four assets the dataset reads (`source_images`, `edit_candidates`,
  `difference_captions`, `edit_scores`: one request per 4 samples, the assets' own schemas, the cache
  keys above), written by a Dagster run of stand-in assets under the product's asset keys through
  the product's IO manager, on the persistent Dagster instance FIRM_HOME/dagster that `firm run` uses;
- the MLflow store (SQLite under FIRM_HOME), made by logging one setup run, as earlier runs would have.

Publish (publish_s): one real Dagster run of the product's `firm_edit_dataset` asset (its own
definition and config, resources from `build_resources()`, that instance). The IO manager loads the
four inputs from the warehouse; the asset assembles the frame, hashes the version, links the images,
writes `data.parquet` a row group at a time and the two ShareGPT task files a record at a time, the
manifest and the root `dataset_info.json`, logs the MLflow run (the default local SQLite store under
FIRM_HOME, with the `mlflow.data` dataset), registers membership, sources and provenance, and records
lineage; the IO manager then writes the output rows to `asset_rows.firm_edit_dataset`. Dagster's step
start-up is included. Also printed: this process's CPU seconds over the run (all threads: a
figure that a busy shared machine does not inflate) and a split read from the run's event log.
The result is checked: Parquet rows, one line per record in each task file, a ShareGPT record read
back through `parse_record`, the MLflow run's n_samples, the IO manager's rows.

Then one `critics` row trained on that version, and the two audits `firm audit critic` and
`firm audit sample` run (through warehouse.lineage, a fresh Warehouse each time, as the CLI opens
one), each timed as the median of 3. peak_rss_gib is this process's ru_maxrss (the code location's
imports, the Dagster run and the audits).

Prints `P4 publish_s=<s> peak_rss_gib=<GiB> audit_s=<slower audit>` last.
Targets on 2 cores: publish_s <= 60, peak_rss_gib <= 4, audit_s <= 1.

  python bench/scale.py                  # n = 370000, 1,000 + 1,000 image files
  python bench/scale.py --n 20000
  python bench/scale.py --images 370000  # one edited image file per sample
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetSelection, DagsterEventType, DagsterInstance, DataVersion, Output, asset, materialize
from PIL import Image

from firm_assets.cli import _dagster_home, _instance
from firm_assets.curation.cache import CACHE_COLUMNS
from firm_assets.curation.prompts import load_template
from firm_assets.curation.sharegpt import parse_record
from firm_assets.curation.versioning import frame_version, short_hash
from firm_assets.edit.candidates import CANDIDATE_SCHEMA
from firm_assets.edit.captions import CAPTION_SCHEMA
from firm_assets.edit.scores import SCORE_SCHEMA
from firm_assets.edit.source_images import SOURCE_SCHEMA
from resources.tracking import TrackingResource
from resources.warehouse_resource import WarehouseIOManager
from warehouse.connection import Warehouse
from warehouse.lineage import find_critic_versions, sample_critics, sample_memberships

DATASET = "firm_edit"
CRITIC = "firm_edit_critic"
ASSET = "firm_edit_dataset"
PARAMS = {"require_text_parse": False, "max_per_bin": 0, "seed": 42}
CHUNK = 50_000  # samples per setup transaction (4 cache rows each); a multiple of EDITS_PER_REQUEST
EDITS_PER_REQUEST = 4  # candidates (samples) per edit request and source image


def fake_revision(name: str) -> str:
    """A stable 40-hex commit sha standing in for a hub revision."""
    return hashlib.sha1(name.encode()).hexdigest()


def run_id(name: str) -> str:
    """A stable Dagster-style run id (uuid)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"firm-bench-p4/{name}"))


# Editors are the dataset's sources; their share of the samples is their count in EDITOR_MIX.
EDITORS = (
    "black-forest-labs/FLUX.1-Kontext-dev",
    "Qwen/Qwen-Image-Edit-2509",
    "stepfun-ai/Step1X-Edit",
    "ByteDance-Seed/BAGEL-7B-MoT",
)
EDITOR_MIX = (0, 0, 0, 0, 1, 1, 1, 2, 2, 3)
JUDGE = "Qwen/Qwen3-VL-8B-Instruct"
CAPTIONER = "Qwen/Qwen3-VL-8B-Instruct"
# Curation happened over three runs: the first build, then two incremental ones.
CURATION_RUNS = ((0.6, run_id("curation-1")), (0.9, run_id("curation-2")), (1.0, run_id("curation-3")))
OBJECTS = ("cup", "kite", "dog", "bench", "umbrella", "book", "car", "clock")


def _stages() -> dict[str, tuple[str, str, dict]]:
    """stage -> (model id, template ref, decoding); chat template refs are the real ones (id@version#sha)."""
    chat = {"max_new_tokens": 384, "temperature": 0.0}
    return {
        "edit_candidates": ("", "edit_instruction@1", {"steps": 28, "guidance": 2.5, "size": 1024}),
        "difference_captions": (
            CAPTIONER,
            load_template("difference_caption").ref,
            {**chat, "max_new_tokens": 512},
        ),
        "execution_scores": (JUDGE, load_template("execution_score").ref, chat),
        "consistency_scores": (JUDGE, load_template("consistency_score").ref, chat),
    }


def _cat(*parts: str | pl.Expr) -> pl.Expr:
    """Concatenate literal strings and expressions into one string column."""
    return pl.concat_str([p if isinstance(p, pl.Expr) else pl.lit(p) for p in parts])


def make_images(folder: Path, count: int) -> tuple[list[str], list[str]]:
    """`count` distinct real PNG files in `folder`: their paths and sha256s."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, shas = [], []
    for k in range(count):
        path = folder / f"{k:07d}.png"
        Image.new("RGB", (64, 64), (k % 256, k // 256 % 256, 40 + k // 65536 % 200)).save(path)
        paths.append(str(path))
        shas.append(hashlib.sha256(path.read_bytes()).hexdigest())
    return paths, shas


def sample_chunk(
    start: int, end: int, n: int, stages: dict[str, tuple[str, str, dict]], images: dict[str, tuple]
) -> pl.DataFrame:
    """Samples [start, end): ids, request, editor, texts, scores, images and each stage's cache key."""
    ids = [short_hash("p4", i) for i in range(start, end)]
    i = pl.col("i")
    request = i // EDITS_PER_REQUEST
    (source_paths, source_shas), (edit_paths, edit_shas) = images["sources"], images["edits"]

    def pick(index: pl.Expr, values: list[str]) -> pl.Expr:
        return index.mod(len(values)).replace_strict(dict(enumerate(values)), return_dtype=pl.String)

    base = pl.DataFrame({"i": pl.int_range(start, end, eager=True), "sample_id": ids}).with_columns(
        pl.format("req-{}", request).alias("request_id"),
        i.mod(len(EDITOR_MIX)).replace_strict(dict(enumerate(EDITOR_MIX))).alias("editor_ix"),
        request.mod(len(OBJECTS)).replace_strict(dict(enumerate(OBJECTS))).alias("object"),
        pick(request, source_paths).alias("source_path"),
        pick(request, source_shas).alias("source_sha"),
        pick(i, edit_paths).alias("edited_path"),
        pick(i, edit_shas).alias("edited_sha"),
        pl.when(i < int(CURATION_RUNS[0][0] * n))
        .then(pl.lit(CURATION_RUNS[0][1]))
        .when(i < int(CURATION_RUNS[1][0] * n))
        .then(pl.lit(CURATION_RUNS[1][1]))
        .otherwise(pl.lit(CURATION_RUNS[2][1]))
        .alias("dagster_run_id"),
    )
    base = base.with_columns(
        pl.col("editor_ix").replace_strict(dict(enumerate(EDITORS)), return_dtype=pl.String).alias("editor"),
        _cat("Move the ", pl.col("object"), " to the left and make it red.").alias("instruction"),
        pl.when(request.mod(3) == 0)
        .then(_cat("Keep the ", pl.col("object"), "'s shape and the background."))
        .otherwise(None)
        .alias("requirement"),
        _cat(
            "The ",
            pl.col("object"),
            " is moved to the left and its colour changes; the background and lighting are unchanged,"
            " and the ",
            pl.col("object"),
            " keeps its shape (sample ",
            pl.col("sample_id"),
            ").",
        ).alias("caption"),
        *(
            (i * (7 + k) + k).mod(5).add(1).alias(f"{d}_score")
            for k, d in enumerate(("execution", "consistency"))
        ),
    )
    base = base.with_columns(
        _cat(
            "The edit ",
            pl.when(pl.col(f"{d}_score") >= 3).then(pl.lit("follows")).otherwise(pl.lit("partly misses")),
            " the instruction for the ",
            pl.col("object"),
            ": the requested change is visible and the rest of the image is preserved, with minor"
            " artefacts at the edges.",
        ).alias(f"{d}_reasoning")
        for d in ("execution", "consistency")
    )
    keys = {
        stage: [hashlib.sha256(f"{stage}\x1f{ref}\x1f{sample}".encode()).hexdigest() for sample in ids]
        for stage, (_, ref, _) in stages.items()
    }
    return base.with_columns(pl.Series(f"{stage}_key", values) for stage, values in keys.items())


def cache_rows(base: pl.DataFrame, stages: dict[str, tuple[str, str, dict]]) -> pa.Table:
    """The chunk's inference_cache rows (4 per sample) in CACHE_COLUMNS order and types."""
    tables = []
    for stage, (model, template_ref, decoding) in stages.items():
        template_id, _, template_version = template_ref.partition("@")
        if stage == "edit_candidates":
            model_col = pl.col("editor")
            revision_col = pl.col("editor_ix").replace_strict(
                {k: fake_revision(v) for k, v in enumerate(EDITORS)}, return_dtype=pl.String
            )
            text = pl.col("edited_sha")
            parsed = _cat('{"image_sha": "', text, '", "image_path": "', pl.col("edited_path"), '"}')
        else:
            model_col, revision_col = pl.lit(model), pl.lit(fake_revision(model))
        if stage == "difference_captions":
            text = pl.col("caption")
            parsed = _cat('{"caption": "', text, '"}')
        elif stage != "edit_candidates":
            dimension = stage.removesuffix("_scores")
            fields = _cat(
                '"reasoning": "',
                pl.col(f"{dimension}_reasoning"),
                '", "score": ',
                pl.col(f"{dimension}_score"),
            )
            text = _cat("{", fields, "}")
            parsed = _cat("{", fields, ', "parse": "strict"}')
        frame = base.select(
            pl.col(f"{stage}_key").alias("cache_key"),
            pl.lit(stage).alias("stage"),
            model_col.alias("model_id"),
            revision_col.alias("model_revision"),
            pl.lit(template_id).alias("template_id"),
            pl.lit(template_version).alias("template_version"),
            pl.lit(json.dumps(decoding, sort_keys=True)).alias("decoding"),
            "sample_id",
            text.alias("output_text"),
            parsed.alias("parsed"),
            pl.lit(True).alias("ok"),
            pl.lit(None, dtype=pl.String).alias("failure"),
            pl.lit(1, dtype=pl.Int32).alias("attempts"),
            (pl.col("i").mod(97).cast(pl.Float64) / 40.0 + 0.2).alias("model_seconds"),
            "dagster_run_id",
        )
        tables.append(frame.to_arrow().cast(pa.schema(list(CACHE_COLUMNS.items()))))
    return pa.concat_tables(tables)


def asset_frames(base: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The chunk's rows of the four assets the dataset reads, in their own schemas."""
    no_images = pl.lit([], dtype=pl.List(pl.String))
    frames = {
        "source_images": base.unique("request_id", keep="first", maintain_order=True).select(
            "request_id",
            "instruction",
            "requirement",
            "source_sha",
            "source_path",
            pl.lit(1024).alias("width"),
            pl.lit(1024).alias("height"),
            no_images.alias("imported_edit_shas"),
            no_images.alias("imported_edit_paths"),
        ),
        "edit_candidates": base.select(
            pl.col("sample_id").alias("candidate_id"),
            "request_id",
            "editor",
            pl.col("editor").map_elements(fake_revision, return_dtype=pl.String).alias("editor_revision"),
            pl.col("i").alias("seed"),
            pl.col("edited_sha").alias("image_sha"),
            pl.col("edited_path").alias("image_path"),
            pl.col("edit_candidates_key").alias("cache_key"),
        ),
        "difference_captions": base.select(
            pl.col("sample_id").alias("candidate_id"),
            "request_id",
            "caption",
            pl.col("difference_captions_key").alias("caption_key"),
            pl.lit(None, dtype=pl.String).alias("failure"),
        ),
        "edit_scores": base.select(
            pl.col("sample_id").alias("candidate_id"),
            "request_id",
            *(
                expr
                for d in ("execution", "consistency")
                for expr in (
                    pl.col(f"{d}_score").alias(f"{d}_score"),
                    pl.col(f"{d}_score").alias(f"{d}_text_score"),
                    pl.col(f"{d}_reasoning"),
                    pl.col(f"{d}_scores_key").alias(f"{d}_key"),
                    pl.lit(None, dtype=pl.String).alias(f"{d}_failure"),
                )
            ),
        ),
    }
    schemas = {
        "source_images": SOURCE_SCHEMA,
        "edit_candidates": CANDIDATE_SCHEMA,
        "difference_captions": CAPTION_SCHEMA,
        "edit_scores": SCORE_SCHEMA,
    }
    return {name: frame.cast(schemas[name]) for name, frame in frames.items()}


def stand_in(name: str, frame: pl.DataFrame):
    """An asset under the product's key `name` that returns `frame`, as the real step would."""

    @asset(name=name)
    def _stand_in() -> Output[pl.DataFrame]:
        return Output(frame, data_version=DataVersion(frame_version(frame)))

    return _stand_in


def setup(home: Path, n: int, n_images: int) -> None:
    """Child process: images, the cache (CHUNK samples per transaction) and the upstream asset rows."""
    started = time.perf_counter()
    n_requests = -(-n // EDITS_PER_REQUEST)
    images = {
        "sources": make_images(home / "images" / "sources", min(n_images, n_requests)),
        "edits": make_images(home / "images" / "edits", min(n_images, n)),
    }
    images_s = time.perf_counter() - started
    warehouse = Warehouse(home / "warehouse.duckdb")
    stages = _stages()
    columns = ", ".join(CACHE_COLUMNS)
    rows, parts = 0, []
    for start in range(0, n, CHUNK):
        base = sample_chunk(start, min(n, start + CHUNK), n, stages, images)
        table = cache_rows(base, stages)
        with warehouse.transaction() as con:
            con.register("cache_rows", table)
            con.execute(f"INSERT INTO inference_cache ({columns}) SELECT * FROM cache_rows")
            con.unregister("cache_rows")
        rows += table.num_rows
        parts.append(asset_frames(base))
    frames = {name: pl.concat([part[name] for part in parts]) for name in parts[0]}
    del parts
    result = materialize(
        [stand_in(name, frame) for name, frame in frames.items()],
        resources={"io_manager": WarehouseIOManager()},
        instance=_instance(_dagster_home()),
    )
    assert result.success
    # the MLflow store exists before a publish at this scale (earlier runs made it): create it here
    TrackingResource().log_run("firm-bench-setup", "p4-setup", tags={}, params={}, metrics={"n": n})
    print(
        f"setup images={sum(len(paths) for paths, _ in images.values())} images_s={images_s:.2f}"
        f" cache_rows={rows} asset_rows={ {name: frame.height for name, frame in frames.items()} }"
        f" setup_s={time.perf_counter() - started:.2f} setup_peak_rss_gib={peak_rss_gib():.2f}",
        flush=True,
    )


def publish(instance: DagsterInstance, n: int) -> tuple[float, str]:
    """One Dagster run of the product's dataset asset; checks what it wrote, prints the split, and
    returns (publish_s, dataset version)."""
    from firm_assets.definitions import ASSETS, build_resources

    started, wall_started, cpu_started = time.perf_counter(), time.time(), time.process_time()
    result = materialize(
        ASSETS,
        selection=AssetSelection.assets(ASSET),
        resources=build_resources(),
        instance=instance,
        run_config={"ops": {ASSET: {"config": PARAMS}}},
    )
    publish_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.step_materialization_data.materialization.metadata
    version, folder = metadata["dataset_version"].value, Path(metadata["export_folder"].value)

    warehouse = Warehouse(Path(os.environ["FIRM_HOME"]) / "warehouse.duckdb")
    ((mlflow_run_id, n_samples),) = warehouse.rows(
        "SELECT mlflow_run_id, n_samples FROM dataset_versions WHERE dataset = ? AND version = ?",
        [DATASET, version],
    )
    ((stored,),) = warehouse.rows(
        f"SELECT count(*) FROM asset_rows.{ASSET} WHERE _dagster_run_id = ?", [result.run_id]
    )
    run = TrackingResource().client().get_run(mlflow_run_id)
    assert (
        n_samples
        == stored
        == run.data.metrics["n_samples"]
        == pq.ParquetFile(folder / "data.parquet").metadata.num_rows
        == n
    )
    sizes = {}
    for task in ("edit_execution", "edit_consistency"):
        path = folder / f"{task}.json"
        with path.open() as lines:
            count = sum(1 for _ in lines)
            assert count == n + 2, (path, count)  # "[", one line per record, "]"
        with path.open() as lines:
            next(lines)
            record = parse_record(json.loads(next(lines).rstrip(",\n")), folder.parent.parent)
        assert (
            len([p for p in record.user if isinstance(p, Path)]) == 2 and json.loads(record.answer)["score"]
        )
        sizes[task] = path.stat().st_size / 2**20
    sizes["data.parquet"] = (folder / "data.parquet").stat().st_size / 2**20
    links = sum(1 for _ in (folder / "images").iterdir())

    at = {
        entry.dagster_event.event_type: entry.timestamp
        for entry in instance.all_logs(result.run_id)
        if entry.dagster_event is not None
    }
    loaded = max(e.timestamp for e in instance.all_logs(result.run_id, of_type=DagsterEventType.LOADED_INPUT))
    step_start, output = at[DagsterEventType.STEP_START], at[DagsterEventType.STEP_OUTPUT]
    handled = at[DagsterEventType.HANDLED_OUTPUT]
    mlflow_s = (run.info.end_time - run.info.start_time) / 1000
    print(
        f"publish rows={n} cpu_s={cpu_s:.2f} (this process, all threads) version={version}"
        f" mlflow_run={mlflow_run_id} image_links={links}"
        f" files_mib={ {k: round(v, 1) for k, v in sizes.items()} }\n"
        f"publish split: to_step_start_s={step_start - wall_started:.2f}"
        f" load_inputs_s={loaded - step_start:.2f} asset_s={output - loaded:.2f} (assemble, exports,"
        f" register; mlflow_s={mlflow_s:.2f}) io_manager_write_s={handled - output:.2f}"
        f" peak_rss_gib={peak_rss_gib():.2f}",
        flush=True,
    )
    return publish_s, version


def insert_critic(warehouse: Warehouse, dataset_version: str) -> tuple[str, str]:
    """One trained critic on the version, as the training asset records it; returns (name, version)."""
    base_model = "Qwen/Qwen3-VL-8B-Instruct"
    recipe = json.dumps({"lora_rank": 64, "learning_rate": 1e-5, "epochs": 1, "batch_size": 128})
    version = hashlib.sha256(
        f"{dataset_version}\x1f{fake_revision(base_model)}\x1f{recipe}".encode()
    ).hexdigest()
    version = version[:16]
    with warehouse.transaction() as con:
        con.execute(
            "INSERT INTO critics (critic, version, base_model, base_revision, dataset, dataset_version,"
            " recipe, path, revision, final_loss, mlflow_run_id, registered_model, model_version,"
            " dagster_run_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                CRITIC,
                version,
                base_model,
                fake_revision(base_model),
                DATASET,
                dataset_version,
                recipe,
                f"/data/firm/critics/{CRITIC}/{version}",
                fake_revision(version),
                0.41,
                uuid.uuid5(uuid.NAMESPACE_URL, f"mlflow/{version}").hex,
                CRITIC,
                "1",
                run_id("train"),
            ],
        )
    return CRITIC, version


def median_seconds(call: Callable[[], object], runs: int = 3) -> tuple[float, object]:
    """Median wall time of `runs` calls, and the last call's result."""
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def peak_rss_gib() -> float:
    """This process's peak resident set (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(home: Path, n: int, n_images: int) -> str:
    """Setup in a child, then publish, record a critic and time the audits here; returns the P4 line."""
    os.environ["FIRM_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the default store under FIRM_HOME, not the user's
    subprocess.run(
        [sys.executable, __file__, "--n", str(n), "--images", str(n_images), "--setup-only", str(home)],
        check=True,
    )
    instance = _instance(_dagster_home())
    publish_s, version = publish(instance, n)

    warehouse_path = home / "warehouse.duckdb"
    warehouse = Warehouse(warehouse_path)
    critic, critic_version = insert_critic(warehouse, version)
    critic_s, critics = median_seconds(lambda: find_critic_versions(Warehouse(warehouse_path), critic))
    row = critics.row(0, named=True)
    assert critics.height == 1 and row["version"] == critic_version and row["n_samples"] == n, row
    assert sum(s["samples"] for s in row["sources"]) == n, row["sources"]
    assert set(row["curation_dagster_runs"]) <= {r for _, r in CURATION_RUNS}, row["curation_dagster_runs"]
    ((sample_id,),) = warehouse.rows(
        "SELECT sample_id FROM dataset_members WHERE dataset = ? AND version = ? ORDER BY sample_id"
        " LIMIT 1 OFFSET ?",
        [DATASET, version, n // 2],
    )

    def sample_audit() -> tuple:
        audit_warehouse = Warehouse(warehouse_path)
        return sample_memberships(audit_warehouse, sample_id), sample_critics(audit_warehouse, sample_id)

    sample_s, (memberships, trained) = median_seconds(sample_audit)
    assert memberships.height == 1 and trained["version"].to_list() == [critic_version], trained
    print(f"audit critic_s={critic_s:.3f} sample_s={sample_s:.3f} sample={sample_id}", flush=True)
    cli = {}
    for kind, ref in (("critic", f"{critic}@{critic_version[:8]}"), ("sample", sample_id)):
        cli_started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "firm_assets.cli", "audit", kind, ref], check=True, capture_output=True
        )
        cli[kind] = time.perf_counter() - cli_started
    print(
        f"cli (one run each, Python start-up included) critic_s={cli['critic']:.2f}"
        f" sample_s={cli['sample']:.2f}",
        flush=True,
    )
    audit_s = max(critic_s, sample_s)
    return f"P4 publish_s={publish_s:.2f} peak_rss_gib={peak_rss_gib():.2f} audit_s={audit_s:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=370_000, help="samples in the dataset (4 cache rows each)")
    parser.add_argument(
        "--images", type=int, default=1_000, help="distinct image files for sources, and as many for edits"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary FIRM_HOME (printed)")
    parser.add_argument("--setup-only", type=Path, help=argparse.SUPPRESS)  # the child: FIRM_HOME
    args = parser.parse_args()
    if args.setup_only:
        setup(args.setup_only, args.n, args.images)
        return

    home = Path(tempfile.mkdtemp(prefix="firm-bench-p4-"))
    try:
        line = run(home, args.n, args.images)
    finally:
        if args.keep:
            print(f"kept FIRM_HOME={home}", flush=True)
        else:
            shutil.rmtree(home, ignore_errors=True)
    print(line)


if __name__ == "__main__":
    main()
