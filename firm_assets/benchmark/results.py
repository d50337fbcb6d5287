"""`bench_results`: every critic in scope scored on FIRM-Bench — each trained critic version, the
untrained base model zero-shot, the constant baseline (the median training label) and an optional
OpenAI-compatible judge — with MAE, correlations, bootstrap intervals, parse-failure rates and
per-category breakdowns; a leaderboard in DuckDB and MLflow, plots in the asset's metadata.

Local judges (trained and base) get the same answer constraint: on a guided profile both decode
under the parser's regex, so the base's parse failures say something about the model, not the
format. The API judge is never guided (its row says so)."""

import base64
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, Config, DataVersion, MetadataValue, Output, asset
from pydantic import Field

from firm_assets.automation import BENCH_CONDITION, GPU_POOL
from firm_assets.benchmark.baselines import BaselineUnavailable, median_labels
from firm_assets.benchmark.item_agreement import ITEM_AGREEMENT_COLUMNS, agreement_by_dimension
from firm_assets.benchmark.plots import confusion_png, scatter_png
from firm_assets.benchmark.stats import evaluate, evaluate_overall
from firm_assets.critics.inference import CriticTask, score_with_critic, tasks_for
from firm_assets.curation.cache import StageStats
from firm_assets.curation.costs import CostMeter
from firm_assets.curation.versioning import frame_version
from resources.chat import ChatBackend
from resources.home import firm_home
from resources.models import ModelsResource, load_chat_backend
from resources.profiles import ChatModelConfig
from resources.tracking import TrackingResource, dagster_tags
from resources.warehouse_resource import WarehouseResource
from warehouse.connection import Warehouse

GROUP = "bench"
HEADLINE = {"edit": "overall", "gen": "instruction"}
OVERALL_DIMENSIONS = ("execution", "consistency")  # edit overall = mean of these two MAEs
LEADERBOARD_COLUMNS = (
    "n_items",
    "n_scored",
    "parse_failure_rate",
    "mae",
    "mae_ci_low",
    "mae_ci_high",
    "mae_expectation",
    "pearson",
    "spearman",
    "kendall",
    "pairwise_agreement",
    "constant_predictions",
    "guided",
    *ITEM_AGREEMENT_COLUMNS,
)
# Every numeric leaderboard figure, logged to MLflow as `<bench>.<dimension>.<figure>`.
MLFLOW_FIGURES = tuple(c for c in LEADERBOARD_COLUMNS if c != "guided")


class BenchResultsConfig(Config):
    """Optional hosted judge and bootstrap size for the bench run."""

    api_base_url: str = Field(default="", description="OpenAI-compatible judge to include (empty: none).")
    api_model: str = Field(default="", description="Model name at api_base_url.")
    bootstrap: int = Field(default=1000, description="Bootstrap resamples for the MAE interval.")


@dataclasses.dataclass(frozen=True)
class Judge:
    """One scorer on the bench (trained, base, constant or hosted) and how to reach it."""

    name: str
    kind: str  # trained | base | constant | api
    config: ChatModelConfig | None  # None for the constant baseline, which needs no model
    expectation: bool  # hosted APIs cannot score a continued prefix
    guided: bool | None  # answers held to the parser's regex; None: no decoding at all
    constants: dict[str, float] | None = None  # the constant baseline's answer per dimension


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
    """The trained critic versions of this side, the untrained base, and the optional API judge.
    Trained and base decode alike: guided exactly when the profile is."""
    profile = models.settings()
    local = profile.judge
    for row in critics.iter_rows(named=True):
        trained = dataclasses.replace(local, model=row["path"], revision=row["revision"])
        yield Judge(f"{row['critic']}@{row['version'][:8]}", "trained", trained, True, profile.guided)
    yield Judge(
        profile.critic.base,
        "base",
        dataclasses.replace(local, model=profile.critic.base, revision=None),
        True,
        profile.guided,
    )
    if config.api_base_url and config.api_model:
        api = ChatModelConfig(backend="openai", model=config.api_model, base_url=config.api_base_url)
        yield Judge(f"api:{config.api_model}", "api", api, False, False)


def constant_judge(warehouse: Warehouse, critic: pl.DataFrame) -> Judge:
    """The constant baseline for the training data of this side's critic (its current version)."""
    row = critic.row(0, named=True)
    medians = median_labels(warehouse, row["dataset"], row["dataset_version"])
    name = f"constant:{row['dataset']}@{row['dataset_version'][:8]}"
    return Judge(name, "constant", None, True, None, medians)


def _predict(
    context,
    task: CriticTask,
    items: pl.DataFrame,
    judge: Judge,
    backend: ChatBackend | None,
    models,
    warehouse,
) -> tuple[pl.DataFrame, StageStats | None]:
    """One task's predictions (item_id, dimension, text_score, expectation_score, verdicts as JSON) and
    the stage's stats; the constant baseline calls no model and has none."""
    if judge.constants is not None:
        value = judge.constants[task.dimension]
        frame = items.select(
            "item_id",
            pl.lit(task.dimension).alias("dimension"),
            pl.lit(value).alias("text_score"),
            pl.lit(value).alias("expectation_score"),
            pl.lit(None, pl.String).alias("verdicts"),
        )
        return frame, None
    profile = models.settings()
    predictions, stats = score_with_critic(
        backend,
        task,
        items,
        warehouse.get(),
        profile.critic.max_new_tokens,
        judge.config.batch_size,
        context.run_id,
        judge.expectation,
        bool(judge.guided),
    )
    return predictions.select("item_id", "dimension", "text_score", "expectation_score", "verdicts"), stats


def _score_side(
    context,
    side: str,
    items: pl.DataFrame,
    judge: Judge,
    backend: ChatBackend | None,
    models,
    warehouse,
    n_boot: int,
    meter: CostMeter,
) -> tuple[pl.DataFrame, list[dict]]:
    """Predictions of one judge on one side (with each item's human score) and its leaderboard rows;
    each scoring stage's stats go to `meter`."""
    parts = []
    for task in tasks_for(side):
        predictions, stats = _predict(context, task, items, judge, backend, models, warehouse)
        if stats is not None:
            meter.add(stats)
        human = items.select("item_id", pl.col(f"human_{task.dimension}").cast(pl.Float64).alias("human"))
        parts.append(
            human.join(predictions, on="item_id", how="left").with_columns(dimension=pl.lit(task.dimension))
        )
    predictions = pl.concat(parts).select(
        "item_id", "dimension", "text_score", "expectation_score", "verdicts", "human"
    )
    agreement = agreement_by_dimension(items, predictions)
    categories = items["category"].to_list()
    columns = {
        d: predictions.filter(pl.col("dimension") == d)
        for d in predictions["dimension"].unique(maintain_order=True)
    }
    rows = []
    for dimension, aligned in columns.items():
        text = evaluate(aligned["text_score"].to_list(), aligned["human"].to_list(), categories, 0, n_boot)
        expected = evaluate(
            aligned["expectation_score"].to_list(), aligned["human"].to_list(), categories, 0, n_boot
        )
        rows.append(_row(side, judge, dimension, text, expected, agreement.get(dimension, {})))
    if side == "edit":
        pair = [columns[d] for d in OVERALL_DIMENSIONS]
        human = [c["human"].to_list() for c in pair]
        text = evaluate_overall([c["text_score"].to_list() for c in pair], human, categories, 0, n_boot)
        expected = evaluate_overall(
            [c["expectation_score"].to_list() for c in pair], human, categories, 0, n_boot
        )
        rows.append(_row(side, judge, "overall", text, expected, {}))
    frame = predictions.with_columns(
        pl.lit(side).alias("bench"), pl.lit(judge.name).alias("judge"), pl.lit(judge.kind).alias("judge_kind")
    )
    return frame, rows


def _row(side: str, judge: Judge, dimension: str, text: dict, expected: dict, agreement: dict) -> dict:
    """A leaderboard row; `agreement` holds the item-agreement figures where items carry labels."""
    return {
        "bench": side,
        "judge": judge.name,
        "judge_kind": judge.kind,
        "dimension": dimension,
        **{k: text[k] for k in LEADERBOARD_COLUMNS if k in text},
        "mae_expectation": expected["mae"],
        "guided": judge.guided,
        **{k: agreement.get(k) for k in ITEM_AGREEMENT_COLUMNS},
        "per_category": text["per_category"],
    }


def _plots(side: str, judge: Judge, predictions: pl.DataFrame, folder: Path) -> list[Path]:
    """Scatter and confusion plots per scored dimension (the overall MAE has no per-item score to plot)."""
    stem = f"{side}-{judge.name.replace('/', '_').replace(':', '_').replace('@', '_')}"
    paths = []
    for dimension in predictions["dimension"].unique(maintain_order=True):
        aligned = predictions.filter(pl.col("dimension") == dimension)
        title = f"{judge.name} on FIRM-Bench {side} ({dimension})"
        predicted, human = aligned["text_score"].to_list(), aligned["human"].to_list()
        paths += [
            scatter_png(predicted, human, title, folder / f"{stem}-{dimension}-scatter.png"),
            confusion_png(predicted, human, title, folder / f"{stem}-{dimension}-confusion.png"),
        ]
    return paths


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
    ("pairwise", "pairwise_agreement"),
    ("constant predictions", "constant_predictions"),
    ("guided", "guided"),
)
NOTE = (
    "Edit overall MAE = mean of the execution and consistency MAEs; its CI resamples items for both "
    "at once; an item counts as scored there only when both parsed; correlations are per dimension "
    "only. `constant` always answers the median training label. `guided`: answers held to the "
    "parser's format (trained and base alike; API judges never)."
)


def _markdown(rows: list[dict], plots: list[Path]) -> str:
    """The leaderboard as a markdown table, then the plots inline (the Dagster UI renders both)."""

    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = [
        NOTE,
        "",
        "| " + " | ".join(title for title, _ in MARKDOWN_COLUMNS) + " |",
        "|" + "---|" * len(MARKDOWN_COLUMNS),
        *("| " + " | ".join(cell(r[key]) for _, key in MARKDOWN_COLUMNS) + " |" for r in rows),
    ]
    images = [
        f"![{p.stem}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})" for p in plots
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(images)


def mlflow_metrics(rows: list[dict]) -> dict[str, float]:
    """One judge's leaderboard rows as MLflow metrics with stable names (`edit.overall.mae`); the
    judge goes in the run's tags, never in a name. Undefined figures are left out."""
    return {
        f"{r['bench']}.{r['dimension']}.{figure}": float(r[figure])
        for r in rows
        for figure in MLFLOW_FIGURES
        if r.get(figure) is not None
    }


def _log_to_mlflow(
    context, tracking: TrackingResource, rows: list[dict], bench_versions: dict[str, str], folder: Path
) -> str:
    """A parent run for this evaluation (bench versions, plots) and one nested run per judge and bench,
    tagged with the judge, its kind and the bench; returns the parent run id."""
    tags = dagster_tags(context)
    parent = tracking.create_run("firm-bench", f"bench-{context.run_id[:8]}", tags)
    tracking.log_values(parent, {f"bench_{side}": v for side, v in bench_versions.items()}, {})
    for bench, judge in dict.fromkeys((r["bench"], r["judge"]) for r in rows):
        mine = [r for r in rows if r["bench"] == bench and r["judge"] == judge]
        judge_tags = {
            **tags,
            "judge": judge,
            "judge_kind": mine[0]["judge_kind"],
            "bench": bench,
            "bench_version": bench_versions[bench],
            "guided": str(mine[0]["guided"]),
        }
        tracking.log_run(
            "firm-bench", f"{bench}-{judge}", judge_tags, {}, mlflow_metrics(mine), parent_run_id=parent
        )
    tracking.log_artifacts(parent, str(folder), "plots")
    tracking.finish(parent)
    return parent


@asset(
    automation_condition=BENCH_CONDITION,
    pool=GPU_POOL,
    group_name=GROUP,
    code_version="bench_results@2",
    kinds={"duckdb", "mlflow"},
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
    """Every judge's agreement with the human bench labels, the figures that compare critics: each
    critic in scope (trained versions, untrained base, constant baseline, optional API judge) scored on
    FIRM-Bench, with MAE and bootstrap CI (edit overall = mean of the execution and consistency MAEs),
    correlations, parse-failure rate and a per-category breakdown."""
    meter = CostMeter()
    folder = firm_home() / "bench" / context.run_id
    folder.mkdir(parents=True, exist_ok=True)
    frames, rows, plots, notes = [], [], [], {}
    sides = (("edit", firm_bench_edit, firm_edit_critic), ("gen", firm_bench_gen, firm_gen_critic))
    for side, items, critic in sides:
        side_judges = list(judges(side, critic_versions(warehouse.get(), critic), models, config))
        try:
            side_judges.append(constant_judge(warehouse.get(), critic))
        except BaselineUnavailable as error:
            notes[f"{side}_constant_baseline"] = f"unavailable: {error}"
            context.log.warning(f"no constant baseline on the {side} bench: {error}")
        for judge in side_judges:
            backend = load_chat_backend(judge.config) if judge.config is not None else None
            predictions, judge_rows = _score_side(
                context, side, items, judge, backend, models, warehouse, config.bootstrap, meter
            )
            frames.append(predictions)
            rows.extend(judge_rows)
            plots.extend(_plots(side, judge, predictions, folder))
    versions = {"edit": firm_bench_edit["bench_version"][0], "gen": firm_bench_gen["bench_version"][0]}
    run_id = _log_to_mlflow(context, tracking, rows, versions, folder)
    with warehouse.get().transaction() as con:
        for r in rows:
            con.execute(
                f"INSERT INTO bench_leaderboard (bench, bench_version, judge, judge_kind, dimension, "
                f"{', '.join(LEADERBOARD_COLUMNS)}, dagster_run_id, mlflow_run_id) VALUES "
                f"({', '.join('?' * (len(LEADERBOARD_COLUMNS) + 7))})",
                [
                    r["bench"],
                    versions[r["bench"]],
                    r["judge"],
                    r["judge_kind"],
                    r["dimension"],
                    *(r[c] for c in LEADERBOARD_COLUMNS),
                    context.run_id,
                    run_id,
                ],
            )
    constant = [f"{r['bench']}/{r['judge']}/{r['dimension']}" for r in rows if r["constant_predictions"]]
    frame = pl.concat(frames).sort("bench", "judge", "dimension", "item_id")
    version = frame_version(frame)
    meter.record(context, warehouse.get(), version)
    return Output(
        frame,
        data_version=DataVersion(version),
        metadata={
            "rows": frame.height,
            **meter.totals(),
            "leaderboard": MetadataValue.md(_markdown(rows, plots)),
            "per_category": MetadataValue.json(
                {f"{r['bench']}/{r['judge']}/{r['dimension']}": r["per_category"] for r in rows}
            ),
            "headline": MetadataValue.json(
                {
                    f"{r['bench']}/{r['judge']}": r["mae"]
                    for r in rows
                    if r["dimension"] == HEADLINE[r["bench"]]
                }
            ),
            "constant_predictors": MetadataValue.json(constant),
            "item_agreement": MetadataValue.json(
                {
                    f"{r['bench']}/{r['judge']}/{r['dimension']}": {k: r[k] for k in ITEM_AGREEMENT_COLUMNS}
                    for r in rows
                    if r["item_n_labelled"]
                }
            ),
            "unguided_judges": MetadataValue.json(sorted({r["judge"] for r in rows if r["guided"] is False})),
            **notes,
            "mlflow_run_id": run_id,
            "mlflow_run": tracking.run_link(run_id),
            "plots": MetadataValue.path(str(folder)),
        },
    )
