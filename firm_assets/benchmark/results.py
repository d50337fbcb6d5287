"""`bench_results`: every critic in scope scored on FIRM-Bench — each trained critic version, the
untrained base model zero-shot, and an optional OpenAI-compatible judge — with MAE, correlations,
bootstrap intervals, parse-failure rates and per-category breakdowns; a leaderboard in DuckDB and
MLflow, plots in the asset's metadata."""

import base64
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, Config, DataVersion, MetadataValue, Output, asset
from pydantic import Field

from firm_assets.benchmark.item_agreement import agreement_by_dimension, record_item_agreement
from firm_assets.benchmark.plots import confusion_png, scatter_png
from firm_assets.benchmark.stats import evaluate
from firm_assets.critics.inference import score_with_critic, tasks_for
from firm_assets.curation.versioning import frame_version
from resources.chat import ChatBackend
from resources.home import firm_home
from resources.models import ModelsResource, load_chat_backend
from resources.profiles import ChatModelConfig
from resources.tracking import TrackingResource, dagster_tags
from resources.warehouse_resource import WarehouseResource
from warehouse.connection import Warehouse

GROUP = "bench"
LEADERBOARD_COLUMNS = (
    "n_items",
    "n_scored",
    "parse_failure_rate",
    "mae",
    "mae_ci_low",
    "mae_ci_high",
    "pearson",
    "spearman",
    "kendall",
    "pairwise_agreement",
)


class BenchResultsConfig(Config):
    api_base_url: str = Field(default="", description="OpenAI-compatible judge to include (empty: none).")
    api_model: str = Field(default="", description="Model name at api_base_url.")
    bootstrap: int = Field(default=1000, description="Bootstrap resamples for the MAE interval.")


@dataclasses.dataclass(frozen=True)
class Judge:
    name: str
    kind: str  # trained | base | api
    config: ChatModelConfig
    expectation: bool  # hosted APIs cannot score a continued prefix


def critic_versions(warehouse: Warehouse, critic: pl.DataFrame) -> pl.DataFrame:
    """Every trained version of this side's critic whose weights are still on disk, oldest first
    (re-scoring an unchanged version is a cache hit)."""
    versions = warehouse.query(
        "SELECT critic, version, path, revision FROM critics WHERE critic = ? ORDER BY created_at",
        [critic["critic"][0]],
    )
    return versions.filter(pl.col("path").map_elements(lambda p: Path(p).is_dir(), return_dtype=pl.Boolean))


def judges(
    side: str, critics: pl.DataFrame, models: ModelsResource, config: BenchResultsConfig
) -> Iterator[Judge]:
    """The trained critic versions of this side, the untrained base, and the optional API judge."""
    profile = models.settings()
    local = profile.judge
    for row in critics.iter_rows(named=True):
        trained = dataclasses.replace(local, model=row["path"], revision=row["revision"])
        yield Judge(f"{row['critic']}@{row['version'][:8]}", "trained", trained, True)
    yield Judge(
        profile.critic.base,
        "base",
        dataclasses.replace(local, model=profile.critic.base, revision=None),
        True,
    )
    if config.api_base_url and config.api_model:
        api = ChatModelConfig(backend="openai", model=config.api_model, base_url=config.api_base_url)
        yield Judge(f"api:{config.api_model}", "api", api, False)


def _with_overall(predictions: pl.DataFrame) -> pl.DataFrame:
    """Edit 'overall' = mean of execution and consistency per item (missing when either is)."""
    wide = predictions.pivot(on="dimension", index="item_id", values=["text_score", "expectation_score"])
    overall = wide.select(
        "item_id",
        pl.lit("overall").alias("dimension"),
        ((pl.col("text_score_execution") + pl.col("text_score_consistency")) / 2).alias("text_score"),
        ((pl.col("expectation_score_execution") + pl.col("expectation_score_consistency")) / 2).alias(
            "expectation_score"
        ),
        pl.lit(None, pl.String).alias("verdicts"),
    )
    return pl.concat([predictions, overall])


def _human(items: pl.DataFrame, dimension: str) -> pl.Series:
    if dimension == "overall":
        return (items["human_execution"] + items["human_consistency"]) / 2
    return items[f"human_{dimension}"]


def _score_side(
    context,
    side: str,
    items: pl.DataFrame,
    judge: Judge,
    backend: ChatBackend,
    models,
    warehouse,
    seed_boot: int,
) -> tuple[pl.DataFrame, list[dict]]:
    profile = models.settings()
    parts, metadata = [], {}
    for task in tasks_for(side):
        predictions, stats = score_with_critic(
            backend,
            task,
            items,
            warehouse.get(),
            profile.critic.max_new_tokens,
            judge.config.batch_size,
            context.run_id,
            judge.expectation,
        )
        parts.append(predictions)
        metadata.update({f"{task.dimension}_{k}": v for k, v in stats.items()})
    predictions = pl.concat(parts).select(
        "item_id", "dimension", "text_score", "expectation_score", "verdicts"
    )
    agreement = agreement_by_dimension(items, predictions)
    if side == "edit":
        predictions = _with_overall(predictions)
    rows = []
    for dimension in predictions["dimension"].unique(maintain_order=True):
        aligned = items.select("item_id", "category", _human(items, dimension).alias("human")).join(
            predictions.filter(pl.col("dimension") == dimension), on="item_id", how="left"
        )
        text = evaluate(
            aligned["text_score"].to_list(),
            aligned["human"].to_list(),
            aligned["category"].to_list(),
            seed=0,
            n_boot=seed_boot,
        )
        expected = evaluate(
            aligned["expectation_score"].to_list(),
            aligned["human"].to_list(),
            aligned["category"].to_list(),
            seed=0,
            n_boot=seed_boot,
        )
        rows.append(
            {
                "bench": side,
                "judge": judge.name,
                "judge_kind": judge.kind,
                "dimension": dimension,
                **{k: text[k] for k in LEADERBOARD_COLUMNS},
                "mae_expectation": expected["mae"],
                "per_category": text["per_category"],
                "item_agreement": agreement.get(dimension),
            }
        )
    frame = predictions.with_columns(
        pl.lit(side).alias("bench"), pl.lit(judge.name).alias("judge"), pl.lit(judge.kind).alias("judge_kind")
    )
    return frame, rows


def _plots(
    side: str, judge: Judge, items: pl.DataFrame, predictions: pl.DataFrame, folder: Path
) -> list[Path]:
    dimension = "overall" if side == "edit" else "instruction"
    aligned = items.select("item_id", _human(items, dimension).alias("human")).join(
        predictions.filter(pl.col("dimension") == dimension), on="item_id", how="left"
    )
    stem = f"{side}-{judge.name.replace('/', '_').replace(':', '_').replace('@', '_')}"
    title = f"{judge.name} on FIRM-Bench {side} ({dimension})"
    predicted, human = aligned["text_score"].to_list(), aligned["human"].to_list()
    return [
        scatter_png(predicted, human, title, folder / f"{stem}-scatter.png"),
        confusion_png(predicted, human, title, folder / f"{stem}-confusion.png"),
    ]


MARKDOWN_COLUMNS = (
    ("bench", "bench"),
    ("judge", "judge"),
    ("kind", "judge_kind"),
    ("dimension", "dimension"),
    ("MAE", "mae"),
    ("CI low", "mae_ci_low"),
    ("CI high", "mae_ci_high"),
    ("MAE (expectation)", "mae_expectation"),
    ("parse fail", "parse_failure_rate"),
    ("Pearson", "pearson"),
    ("Spearman", "spearman"),
    ("Kendall", "kendall"),
)


def _markdown(rows: list[dict], plots: list[Path]) -> str:
    """The leaderboard as a markdown table, then the plots inline (the Dagster UI renders both)."""

    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = [
        "| " + " | ".join(title for title, _ in MARKDOWN_COLUMNS) + " |",
        "|" + "---|" * len(MARKDOWN_COLUMNS),
        *("| " + " | ".join(cell(r[key]) for _, key in MARKDOWN_COLUMNS) + " |" for r in rows),
    ]
    images = [
        f"![{p.stem}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})" for p in plots
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(images)


@asset(
    group_name=GROUP,
    code_version="bench_results@2",
    kinds={"duckdb", "mlflow"},
    description="Every critic in scope (trained versions, untrained base, optional API judge) scored on "
    "FIRM-Bench: MAE with bootstrap CI, correlations, parse-failure rate, per-category breakdown.",
)
def bench_results(
    context: AssetExecutionContext,
    config: BenchResultsConfig,
    firm_bench_edit: pl.DataFrame,
    firm_bench_gen: pl.DataFrame,
    firm_edit_critic: pl.DataFrame,
    firm_gen_critic: pl.DataFrame,
    models: ModelsResource,
    warehouse: WarehouseResource,
    tracking: TrackingResource,
) -> Output[pl.DataFrame]:
    folder = firm_home() / "bench" / context.run_id
    folder.mkdir(parents=True, exist_ok=True)
    frames, rows, plots = [], [], []
    sides = (("edit", firm_bench_edit, firm_edit_critic), ("gen", firm_bench_gen, firm_gen_critic))
    for side, items, critic in sides:
        for judge in judges(side, critic_versions(warehouse.get(), critic), models, config):
            backend = load_chat_backend(judge.config)
            predictions, judge_rows = _score_side(
                context, side, items, judge, backend, models, warehouse, config.bootstrap
            )
            frames.append(predictions)
            rows.extend(judge_rows)
            plots.extend(_plots(side, judge, items, predictions, folder))
    metrics = {
        f"{r['bench']}.{r['judge']}.{r['dimension']}.{name}".replace(":", "_").replace("@", "_"): r[name]
        for r in rows
        for name in ("mae", "parse_failure_rate", "mae_expectation")
        if r[name] is not None
    }
    run_id = tracking.create_run("firm-bench", f"bench-{context.run_id[:8]}", dagster_tags(context))
    tracking.log_values(
        run_id,
        {"bench_edit": firm_bench_edit["bench_version"][0], "bench_gen": firm_bench_gen["bench_version"][0]},
        metrics,
    )
    tracking.log_artifacts(run_id, str(folder), "plots")
    tracking.finish(run_id)
    versions = {"edit": firm_bench_edit["bench_version"][0], "gen": firm_bench_gen["bench_version"][0]}
    with warehouse.get().transaction() as con:
        for r in rows:
            con.execute(
                f"INSERT INTO bench_leaderboard (bench, bench_version, judge, judge_kind, dimension, "
                f"{', '.join(LEADERBOARD_COLUMNS)}, mae_expectation, dagster_run_id, mlflow_run_id) VALUES "
                f"({', '.join('?' * (len(LEADERBOARD_COLUMNS) + 8))})",
                [
                    r["bench"],
                    versions[r["bench"]],
                    r["judge"],
                    r["judge_kind"],
                    r["dimension"],
                    *(r[c] for c in LEADERBOARD_COLUMNS),
                    r["mae_expectation"],
                    context.run_id,
                    run_id,
                ],
            )
        record_item_agreement(con, context.run_id, rows)
    frame = pl.concat(frames).sort("bench", "judge", "dimension", "item_id")
    return Output(
        frame,
        data_version=DataVersion(frame_version(frame)),
        metadata={
            "rows": frame.height,
            "leaderboard": MetadataValue.md(_markdown(rows, plots)),
            "per_category": MetadataValue.json(
                {f"{r['bench']}/{r['judge']}/{r['dimension']}": r["per_category"] for r in rows}
            ),
            "item_agreement": MetadataValue.json(
                {
                    f"{r['bench']}/{r['judge']}/{r['dimension']}": r["item_agreement"]
                    for r in rows
                    if r["item_agreement"]
                }
            ),
            "mlflow_run_id": run_id,
            "plots": MetadataValue.path(str(folder)),
        },
    )
