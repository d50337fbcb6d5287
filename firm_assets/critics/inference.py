"""Critic inference, shared by FIRM-Bench evaluation and (later) the reward server.

A critic answers its rubric prompt; the score is read twice: from the parsed text (an answer that
does not parse is a recorded failure, masked — never 0) and as the expectation of the score digit
under the model's next-token probabilities after its own reasoning (smooth, no parse failures).
Calls go through the same cache as curation, so re-evaluating an unchanged critic costs nothing.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from firm_assets.curation.cache import StageStats
from firm_assets.curation.parsers import CONSISTENCY_JSON, EXECUTION_JSON, PLAN_THEN_SCORE, Parser
from firm_assets.curation.prompts import load_template
from firm_assets.curation.stage import ChatStage, StageInput, run_chat_stage
from resources.chat import ChatBackend, Decoding, ImagePart
from warehouse.connection import Warehouse

NO_REQUIREMENT = "none"


@dataclass(frozen=True)
class CriticTask:
    """One scored dimension of a bench side: the critic prompt and the answer format."""

    side: str
    dimension: str
    template_id: str
    parser: Parser


CRITIC_TASKS = (
    CriticTask("edit", "execution", "critic_edit_execution", EXECUTION_JSON),
    CriticTask("edit", "consistency", "critic_edit_consistency", CONSISTENCY_JSON),
    CriticTask("gen", "instruction", "critic_gen_instruction", PLAN_THEN_SCORE),
)

PREDICTION_SCHEMA = {
    "item_id": pl.String,
    "dimension": pl.String,
    "text_score": pl.Float64,
    "expectation_score": pl.Float64,
    "failure": pl.String,
    "cache_key": pl.String,
    "verdicts": pl.String,  # JSON [{question, verdict, evidence}] for plan-then-score answers, else null
}


def tasks_for(side: str) -> list[CriticTask]:
    """The critic tasks one side (edit or gen) scores with."""
    return [task for task in CRITIC_TASKS if task.side == side]


def _inputs(task: CriticTask, items: pl.DataFrame) -> list[StageInput]:
    """Bench rows (item_id, text, images, image_shas) as the critic prompt's variables and images."""
    template = load_template(task.template_id)
    inputs = []
    for row in items.iter_rows(named=True):
        images = {
            name: ImagePart(Path(path), sha)
            for name, path, sha in zip(template.images, row["images"], row["image_shas"], strict=True)
        }
        variables = (
            {"instruction": row["text"], "requirement": NO_REQUIREMENT}
            if task.side == "edit"
            else {"prompt": row["text"]}
        )
        inputs.append(StageInput(row["item_id"], variables, images))
    return inputs


def score_with_critic(
    backend: ChatBackend,
    task: CriticTask,
    items: pl.DataFrame,
    warehouse: Warehouse,
    max_new_tokens: int,
    batch_size: int,
    run_id: str | None,
    expectation: bool = True,
    guided: bool = False,
) -> tuple[pl.DataFrame, StageStats]:
    """One row per item: text score (None when the answer did not parse) and expectation score, and
    the stage's stats (calls, cache hits, seconds, tokens).
    `guided` holds the answer to the parser's format, as curation does on a guided profile."""
    regex = task.parser.guide(max_new_tokens) if guided and task.parser.guide else None
    stage = ChatStage(
        name=f"critic_{task.side}_{task.dimension}",
        template=load_template(task.template_id),
        parser=task.parser,
        decoding=Decoding(max_new_tokens=max_new_tokens, regex=regex),
        max_attempts=1,
        score_reader="expectation" if expectation else "text",
    )
    results, stats = run_chat_stage(stage, backend, _inputs(task, items), warehouse, batch_size, run_id)
    rows = []
    for item_id, result in results.items():
        parsed = result.outcome.parsed or {}
        text_score = parsed.get("text_score") if expectation else parsed.get("score")
        rows.append(
            {
                "item_id": item_id,
                "dimension": task.dimension,
                "text_score": float(text_score) if text_score is not None else None,
                "expectation_score": parsed.get("score") if expectation and result.outcome.ok else None,
                "failure": result.outcome.failure,
                "cache_key": result.cache_key,
                "verdicts": json.dumps(parsed["verdicts"]) if "verdicts" in parsed else None,
            }
        )
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA), stats
