"""P4: assembly and audit at scale — a 370,000-sample scored dataset with no model calls.

Setup (timed apart, not part of assemble_s): a fresh warehouse under a temporary FIRM_HOME gets four
`inference_cache` rows per sample (edit_candidates, difference_captions, execution_scores,
consistency_scores: 1.48M rows at the default n) with realistic model ids, revisions, template refs,
decoding, parsed answers and curation Dagster run ids, inserted as Arrow tables through
`Warehouse.transaction()` in the cache's own row format (`CACHE_COLUMNS`). It runs in a child process,
as the curation steps that fill the cache run in their own step processes, so the child's memory is
not counted in this process's peak.

Assembly (assemble_s): this process reads the four stages' outputs back from the warehouse, joins them
into the dataset frame the product builds (sample_id, source, cache_keys and the score columns), hashes
it with `dataset_version_id` and registers it with `register_version` (membership, sources and
provenance in one transaction) — the product's own code from firm_assets/curation/dataset.py.
Not done here: the Parquet file, the ShareGPT JSON exports and image links that `publish_dataset` also
writes (there are no images; their cost is file I/O this bench does not measure), and no MLflow run.

Then one `critics` row trained on that version, and the two audits `firm audit critic` and
`firm audit sample` run (through warehouse.lineage, a fresh Warehouse each time, as the CLI opens one),
each timed as the median of 3. peak_rss_gib is this process's ru_maxrss (assembly and audits).

Prints `P4 assemble_s=<s> peak_rss_gib=<GiB> audit_s=<slower audit>` last.
Targets on 2 cores: assemble_s <= 60, peak_rss_gib <= 4, audit_s <= 1.

  python bench/scale.py            # n = 370000
  python bench/scale.py --n 2000
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

import duckdb
import polars as pl
import pyarrow as pa

from firm_assets.curation.cache import CACHE_COLUMNS
from firm_assets.curation.dataset import dataset_version_id, register_version
from firm_assets.curation.prompts import load_template
from warehouse.connection import Warehouse
from warehouse.lineage import find_critic_versions, sample_critics, sample_memberships

DATASET = "firm_edit"
CRITIC = "firm_edit_critic"
PARAMS = {"require_text_parse": False, "max_per_bin": 0, "seed": 42}
CHUNK = 50_000  # samples per setup transaction (4 cache rows each)


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


def cache_chunk(start: int, end: int, n: int, stages: dict[str, tuple[str, str, dict]]) -> pa.Table:
    """The cache rows of samples [start, end) as one Arrow table in CACHE_COLUMNS order and types."""
    ids = [hashlib.sha256(f"p4\x1f{i}".encode()).hexdigest()[:16] for i in range(start, end)]
    base = pl.DataFrame({"i": pl.int_range(start, end, eager=True), "sample_id": ids}).with_columns(
        pl.col("i").mod(len(EDITOR_MIX)).replace_strict(dict(enumerate(EDITOR_MIX))).alias("editor_ix"),
        pl.col("i").mod(len(OBJECTS)).replace_strict(dict(enumerate(OBJECTS))).alias("object"),
        pl.when(pl.col("i") < int(CURATION_RUNS[0][0] * n))
        .then(pl.lit(CURATION_RUNS[0][1]))
        .when(pl.col("i") < int(CURATION_RUNS[1][0] * n))
        .then(pl.lit(CURATION_RUNS[1][1]))
        .otherwise(pl.lit(CURATION_RUNS[2][1]))
        .alias("dagster_run_id"),
    )
    tables = []
    for offset, (stage, (model, template_ref, decoding)) in enumerate(stages.items()):
        template_id, _, template_version = template_ref.partition("@")
        if stage == "edit_candidates":
            model_col = pl.col("editor_ix").replace_strict(dict(enumerate(EDITORS)), return_dtype=pl.String)
            revision_col = pl.col("editor_ix").replace_strict(
                {k: fake_revision(v) for k, v in enumerate(EDITORS)}, return_dtype=pl.String
            )
        else:
            model_col, revision_col = pl.lit(model), pl.lit(fake_revision(model))
        keys = [
            hashlib.sha256(f"{stage}\x1f{template_ref}\x1f{sample}".encode()).hexdigest() for sample in ids
        ]
        score = (pl.col("i") * (7 + offset) + offset).mod(5) + 1
        if stage == "edit_candidates":
            sha = pl.col("cache_key").str.reverse()
            text = sha
            parsed = _cat('{"image_sha": "', sha, '", "image_path": "/data/firm/images/', sha, '.png"}')
        elif stage == "difference_captions":
            text = _cat(
                "The ",
                pl.col("object"),
                " is moved to the left and its colour changes; the background and lighting are unchanged,"
                " and the ",
                pl.col("object"),
                " keeps its shape (sample ",
                pl.col("sample_id"),
                ").",
            )
            parsed = _cat('{"caption": "', text, '"}')
        else:
            reasoning = _cat(
                "The edit ",
                pl.when(score >= 3).then(pl.lit("follows")).otherwise(pl.lit("partly misses")),
                " the instruction for the ",
                pl.col("object"),
                ": the requested change is visible and the rest of the image is preserved, with minor"
                " artefacts at the edges.",
            )
            text = _cat('{"reasoning": "', reasoning, '", "score": ', score, "}")
            parsed = _cat('{"reasoning": "', reasoning, '", "score": ', score, ', "parse": "strict"}')
        frame = base.with_columns(pl.Series("cache_key", keys)).select(
            "cache_key",
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


def setup(warehouse_path: Path, n: int) -> None:
    """Child process: fill the cache with 4 rows per sample, CHUNK samples per transaction."""
    started = time.perf_counter()
    warehouse = Warehouse(warehouse_path)
    stages = _stages()
    columns = ", ".join(CACHE_COLUMNS)
    rows = 0
    for start in range(0, n, CHUNK):
        table = cache_chunk(start, min(n, start + CHUNK), n, stages)
        with warehouse.transaction() as con:
            con.register("cache_rows", table)
            con.execute(f"INSERT INTO inference_cache ({columns}) SELECT * FROM cache_rows")
            con.unregister("cache_rows")
        rows += table.num_rows
    print(
        f"setup cache_rows={rows} setup_s={time.perf_counter() - started:.2f}"
        f" setup_peak_rss_gib={peak_rss_gib():.2f}",
        flush=True,
    )


def read_stage(con: duckdb.DuckDBPyConnection, stage: str) -> pl.DataFrame:
    """One stage's outputs as the dataset step receives them: sample id, cache key, model, parsed."""
    return con.sql(
        "SELECT sample_id, cache_key, model_id, parsed FROM inference_cache WHERE stage = $stage",
        params={"stage": stage},
    ).pl()


def assemble_frame(warehouse: Warehouse) -> pl.DataFrame:
    """Join the four stages per sample into the dataset frame (as firm_assets.edit.dataset.assemble)."""
    with warehouse.transaction() as con:
        candidates, captions, execution, consistency = (
            read_stage(con, s)
            for s in ("edit_candidates", "difference_captions", "execution_scores", "consistency_scores")
        )

    def field(name: str, dtype: type[pl.DataType] = pl.String) -> pl.Expr:
        return pl.col("parsed").str.json_path_match(f"$.{name}").cast(dtype)

    def scores(frame: pl.DataFrame, dimension: str) -> pl.DataFrame:
        return frame.select(
            "sample_id",
            field("score", pl.Float64).alias(f"{dimension}_score"),
            field("reasoning").alias(f"{dimension}_reasoning"),
            pl.col("cache_key").alias(f"{dimension}_key"),
        )

    frame = (
        candidates.select(
            "sample_id",
            pl.col("model_id").alias("source"),
            field("image_sha").alias("edited_sha"),
            field("image_path").alias("edited_path"),
            "cache_key",
        )
        .join(
            captions.select(
                "sample_id", field("caption").alias("caption"), pl.col("cache_key").alias("caption_key")
            ),
            on="sample_id",
        )
        .join(scores(execution, "execution"), on="sample_id")
        .join(scores(consistency, "consistency"), on="sample_id")
    )
    return frame.select(
        "sample_id",
        "source",
        "edited_sha",
        "edited_path",
        "caption",
        "execution_score",
        "execution_reasoning",
        "consistency_score",
        "consistency_reasoning",
        pl.concat_list("cache_key", "caption_key", "execution_key", "consistency_key").alias("cache_keys"),
    )


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


def run(home: Path, n: int) -> str:
    """Setup in a child, then assemble, record a critic and time the audits here; returns the P4 line."""
    os.environ["FIRM_HOME"] = str(home)
    warehouse_path = home / "warehouse.duckdb"
    subprocess.run([sys.executable, __file__, "--n", str(n), "--setup-only", str(warehouse_path)], check=True)

    warehouse = Warehouse(warehouse_path)
    started = time.perf_counter()
    frame = assemble_frame(warehouse)
    read_s, read_rss = time.perf_counter() - started, peak_rss_gib()
    version = dataset_version_id(frame, PARAMS)
    hash_s, hash_rss = time.perf_counter() - started - read_s, peak_rss_gib()
    folder = home / "datasets" / DATASET / version  # not written: see the docstring
    register_version(warehouse, DATASET, version, frame, PARAMS, folder, run_id("publish"), uuid.uuid4().hex)
    assemble_s = time.perf_counter() - started
    print(
        f"assemble rows={frame.height} read_join_s={read_s:.2f} version_hash_s={hash_s:.2f}"
        f" register_s={assemble_s - read_s - hash_s:.2f} version={version}\n"
        f"peak_rss_gib after read_join={read_rss:.2f} version_hash={hash_rss:.2f}"
        f" register={peak_rss_gib():.2f}",
        flush=True,
    )
    sample_id = frame["sample_id"][frame.height // 2]
    del frame
    critic, critic_version = insert_critic(warehouse, version)

    critic_s, critics = median_seconds(lambda: find_critic_versions(Warehouse(warehouse_path), critic))
    row = critics.row(0, named=True)
    assert critics.height == 1 and row["version"] == critic_version and row["n_samples"] == n, row
    assert sum(s["samples"] for s in row["sources"]) == n, row["sources"]
    assert set(row["curation_dagster_runs"]) <= {r for _, r in CURATION_RUNS}, row["curation_dagster_runs"]

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
    return f"P4 assemble_s={assemble_s:.2f} peak_rss_gib={peak_rss_gib():.2f} audit_s={audit_s:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=370_000, help="samples in the dataset (4 cache rows each)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary FIRM_HOME (printed)")
    parser.add_argument("--setup-only", type=Path, help=argparse.SUPPRESS)  # the child: warehouse path
    args = parser.parse_args()
    if args.setup_only:
        setup(args.setup_only, args.n)
        return

    home = Path(tempfile.mkdtemp(prefix="firm-bench-p4-"))
    try:
        line = run(home, args.n)
    finally:
        if args.keep:
            print(f"kept FIRM_HOME={home}", flush=True)
        else:
            shutil.rmtree(home, ignore_errors=True)
    print(line)


if __name__ == "__main__":
    main()
