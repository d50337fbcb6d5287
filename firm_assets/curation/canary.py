"""Judge-drift canary: a pinned set of score items (`canary.yaml`) whose scores under the current judge
are compared with the previous judge's. The score assets ask the canary items among their inputs
once more, in a stage of their own (`canary:<stage>`) whose cache keys also hold the backend's name;
a judge is the identity those rows carry (model id, weights revision, backend, template id and
version, decoding). Changing any of them re-scores the canary with the new judge, and the previous
judge's answers are still in the cache to compare with. The curation stages' keys stay backend-free
(the same weights behind another backend are cache hits there), so only the canary pays for a
backend move, and it is how that move is checked. The check warns when agreement drops past the
thresholds below and lists the items that moved.

Items are pinned by content-derived ids: an edit item is an imported candidate, whose id hashes its
request (instruction, paths) and the edited image's sha256; a gen item is a generated image, whose id
hashes its prompt's text and the generator, its settings and seed. Previous answers are matched by
that id (the cache's sample_id)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

from firm_assets.curation.cache import StageStats, calls_per_second
from firm_assets.curation.stage import ChatStage, StageInput, run_chat_stage
from resources.chat import ChatBackend
from warehouse.connection import Warehouse

CANARY_FILE = Path(__file__).parent / "canary.yaml"
CANARY_PREFIX = "canary:"
CANARY_KEYS = "canary_keys"  # the score assets' metadata entry the drift checks read
MAX_MEAN_ABS_DELTA = 0.75  # mean |current - previous| over the canary, on the 1-5 scale
MIN_EXACT_AGREEMENT = 0.6  # share of canary scores that round to the same integer as before


@dataclass(frozen=True)
class Canary:
    """The pinned items re-judged on every run to detect judge drift."""

    version: int
    items: dict[str, tuple[str, ...]]  # side (edit | gen) -> pinned item ids

    @property
    def ref(self) -> str:
        """Versioned name recorded with drift results, so a changed canary set is visible."""
        return f"canary@{self.version}"


def load_canary(path: Path = CANARY_FILE) -> Canary:
    """The pinned canary; a file without a version or with an empty side is an error, not a silent
    empty canary."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("version"), int):
        raise ValueError(f"{path}: a canary file needs an integer `version`")
    items = {}
    for side in ("edit", "gen"):
        ids = data.get(side)
        if not ids or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{path}: `{side}` must be a non-empty list of item ids")
        items[side] = tuple(ids)
    return Canary(data["version"], items)


def canary_stage(stage: str) -> str:
    """The canary's own stage for a score stage: its cache rows are the canary's judges."""
    return CANARY_PREFIX + stage


def score_canary(
    side: str,
    stage: ChatStage,
    backend: ChatBackend,
    inputs: Sequence[StageInput],
    warehouse: Warehouse,
    batch_size: int,
    run_id: str | None,
) -> tuple[set[str], StageStats]:
    """Ask the canary items among `inputs` again as `stage` would, in the canary's stage and with the
    backend's name in their keys (cache hits while the judge and its backend stay the same); returns
    their cache keys, which the drift check reads as the current judge's, and the stage's stats."""
    pinned = set(load_canary().items[side])
    canary = dataclasses.replace(stage, name=canary_stage(stage.name))
    chosen = [sample for sample in inputs if sample.sample_id in pinned]
    identity = {"backend": backend.model.backend}
    results, stats = run_chat_stage(canary, backend, chosen, warehouse, batch_size, run_id, identity)
    return {result.cache_key for result in results.values()}, stats


def canary_metadata(side: str, keys: set[str], stats: list[StageStats]) -> dict:
    """What a score asset reports of its canary stages: the keys the drift check compares (`CANARY_KEYS`)
    and the calls, tokens and time they cost (as `<side>_canary_model_calls`, ...)."""
    figures = ("model_calls", "cache_hits", "tokens_in", "tokens_out", "model_seconds", "wall_seconds")
    totals = {f: sum(getattr(s, f) for s in stats) for f in figures}
    totals["calls_per_s"] = calls_per_second(totals["model_calls"], totals["wall_seconds"])
    return {
        CANARY_KEYS: MetadataValue.json(sorted(keys)),
        **{f"{side}_canary_{f}": round(v, 3) if isinstance(v, float) else v for f, v in totals.items()},
    }


def half_up(score: float) -> int:
    """The integer a 1-5 score rounds to (halves up, unlike Python's round)."""
    return math.floor(score + 0.5)


@dataclass(frozen=True)
class Drift:
    """Agreement of the current judge with the previous one on the canary items both scored."""

    compared: int
    mean_abs_delta: float
    exact_agreement: float
    moved: list[dict]  # {item, stage, previous, current} for scores that round differently

    @property
    def drifted(self) -> bool:
        """Whether the judge moved past the drift limits on the canary items."""
        return self.compared > 0 and (
            self.mean_abs_delta > MAX_MEAN_ABS_DELTA or self.exact_agreement < MIN_EXACT_AGREEMENT
        )


def compare(previous: dict[tuple[str, str], float], current: dict[tuple[str, str], float]) -> Drift:
    """Scores keyed by (stage, item): the items scored by both, their mean absolute difference, the
    share that round to the same integer, and those that do not."""
    shared = sorted(set(previous) & set(current))
    if not shared:
        return Drift(0, 0.0, 1.0, [])
    deltas = [abs(current[key] - previous[key]) for key in shared]
    moved = [
        {"stage": stage, "item": item, "previous": previous[(stage, item)], "current": current[(stage, item)]}
        for stage, item in shared
        if half_up(previous[(stage, item)]) != half_up(current[(stage, item)])
    ]
    return Drift(len(shared), sum(deltas) / len(shared), 1 - len(moved) / len(shared), moved)


@dataclass(frozen=True)
class JudgeScores:
    """The current judge's canary scores and the previous judge's (empty when there was none)."""

    current_judge: str | None
    previous_judge: str | None
    current: dict[tuple[str, str], float]
    previous: dict[tuple[str, str], float]


def _judge(row: dict) -> str:
    decoding = json.loads(row["decoding"])
    backend = decoding.pop("backend", "?")  # the canary stages store it with the decoding
    return (
        f"{row['model_id']}@{row['model_revision'][:12]} via {backend}"
        f" {row['template_id']}@{row['template_version']} decoding {json.dumps(decoding, sort_keys=True)}"
    )


def judge_scores(
    warehouse: Warehouse, stages: list[str], items: list[str], current_keys: set[str]
) -> JudgeScores:
    """Read the canary items' cached scores for `stages`: the rows under `current_keys` are the current
    judge's; among the other judges that scored these items the one that answered last is the
    previous judge, and its latest answer per item counts. Failed answers carry no score."""
    rows = warehouse.query(
        "SELECT cache_key, stage, sample_id, model_id, model_revision, template_id, template_version,"
        " decoding, parsed, ok, created_at FROM inference_cache"
        " WHERE stage IN (SELECT unnest(?)) AND sample_id IN (SELECT unnest(?)) ORDER BY created_at",
        [stages, items],
    ).to_dicts()
    current_rows = [row for row in rows if row["cache_key"] in current_keys]
    current_judges = {row["stage"]: _judge(row) for row in current_rows}
    others = [row for row in rows if _judge(row) != current_judges.get(row["stage"])]
    previous_judges = {row["stage"]: _judge(row) for row in others}  # the latest per stage
    previous_rows = [row for row in others if _judge(row) == previous_judges[row["stage"]]]
    return JudgeScores(
        "; ".join(sorted(set(current_judges.values()))) or None,
        "; ".join(sorted(set(previous_judges.values()))) or None,
        _scores(current_rows),
        _scores(previous_rows),
    )


def _scores(rows: list[dict]) -> dict[tuple[str, str], float]:
    """(stage, item) -> score of ok rows; a later row of the same item replaces an earlier one."""
    return {
        (row["stage"], row["sample_id"]): float(json.loads(row["parsed"])["score"])
        for row in rows
        if row["ok"] and row["parsed"]
    }


def canary_check(
    warehouse: Warehouse, side: str, stages: list[str], present: set[str], current_keys: set[str]
) -> AssetCheckResult:
    """The drift check for one score asset: `stages` are its canary stages, `present` the item ids in
    its output, `current_keys` the cache keys of its canary answers (`score_canary`). Warns when the
    canary is not among the inputs (nothing can be compared), and when agreement with the previous
    judge drops past the thresholds."""
    canary = load_canary()
    pinned = list(canary.items[side])
    found = [item for item in pinned if item in present]
    base = {
        "canary": canary.ref,
        "canary_found": f"{len(found)} of {len(pinned)}",
        "max_mean_abs_delta": MAX_MEAN_ABS_DELTA,
        "min_exact_agreement": MIN_EXACT_AGREEMENT,
    }
    if not found:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.WARN,
            description="no canary item is among this run's inputs, so judge drift cannot be measured",
            metadata=base,
        )
    scores = judge_scores(warehouse, stages, found, current_keys)
    drift = compare(scores.previous, scores.current)
    return AssetCheckResult(
        passed=not drift.drifted,
        severity=AssetCheckSeverity.WARN,
        description=None if scores.previous_judge else "no previous judge has scored the canary",
        metadata={
            **base,
            "current_judge": scores.current_judge or "-",
            "previous_judge": scores.previous_judge or "-",
            "compared": drift.compared,
            "mean_abs_delta": round(drift.mean_abs_delta, 4),
            "exact_agreement": round(drift.exact_agreement, 4),
            "moved": MetadataValue.json(drift.moved),
        },
    )
