"""`edit_candidates`: the edited images to score — imported ones plus every editor config x seed."""

import polars as pl
from dagster import AssetExecutionContext, DataVersion, Output, asset

from firm_assets.curation.generation import ImageJob, run_image_stage
from firm_assets.curation.versioning import frame_version, short_hash
from resources.home import firm_home
from resources.models import ModelsResource
from resources.warehouse_resource import WarehouseResource

GROUP = "edit"
IMPORTED = "imported"
EDIT_TEMPLATE = "edit_instruction@1"

CANDIDATE_SCHEMA = {
    "candidate_id": pl.String,
    "request_id": pl.String,
    "editor": pl.String,
    "editor_revision": pl.String,
    "seed": pl.Int64,
    "image_sha": pl.String,
    "image_path": pl.String,
    "cache_key": pl.String,
}


def _imported(source_images: pl.DataFrame) -> list[dict]:
    return [
        {
            "candidate_id": short_hash(row["request_id"], IMPORTED, sha),
            "request_id": row["request_id"],
            "editor": IMPORTED,
            "editor_revision": "",
            "seed": None,
            "image_sha": sha,
            "image_path": path,
            "cache_key": None,
        }
        for row in source_images.iter_rows(named=True)
        for sha, path in zip(row["imported_edit_shas"], row["imported_edit_paths"], strict=True)
    ]


@asset(
    group_name=GROUP,
    code_version=f"{EDIT_TEMPLATE}+candidates@1",
    kinds={"duckdb", "diffusers"},
    description="Edited candidates per request: imported edited images, plus each configured editor "
    "(diffusers) x seed, content-hashed with model id, revision and seed.",
)
def edit_candidates(
    context: AssetExecutionContext,
    source_images: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
) -> Output[pl.DataFrame]:
    profile = models.settings()
    rows = _imported(source_images)
    metadata: dict[str, float | int] = {"imported": len(rows)}
    for config in profile.editors:
        backend = models.image_backend(config)
        jobs = {
            short_hash(row["request_id"], config.model, seed): (
                ImageJob(
                    short_hash(row["request_id"], config.model, seed),
                    row["instruction"],
                    seed,
                    row["source_path"],
                    row["source_sha"],
                ),
                row["request_id"],
            )
            for row in source_images.iter_rows(named=True)
            for seed in profile.seeds
        }
        results, stats = run_image_stage(
            "edit_candidates",
            EDIT_TEMPLATE,
            config,
            backend,
            [job for job, _ in jobs.values()],
            warehouse.get(),
            firm_home() / "images",
            context.run_id,
        )
        for key, value in stats.as_metadata().items():
            metadata[key] = metadata.get(key, 0) + value
        for sample_id, result in results.items():
            if not result.outcome.ok:
                continue
            job, request_id = jobs[sample_id]
            rows.append(
                {
                    "candidate_id": sample_id,
                    "request_id": request_id,
                    "editor": backend.model.model_id,
                    "editor_revision": backend.model.revision,
                    "seed": job.seed,
                    "image_sha": result.outcome.parsed["image_sha"],
                    "image_path": result.outcome.parsed["image_path"],
                    "cache_key": result.cache_key,
                }
            )
    frame = pl.DataFrame(rows, schema=CANDIDATE_SCHEMA).sort("candidate_id")
    version = frame_version(frame.drop("image_path"))
    context.log.info(f"edit_candidates: {frame.height} candidates, {metadata}")
    return Output(frame, data_version=DataVersion(version), metadata={**metadata, "rows": frame.height})
