"""Judge-drift canary: agreement figures on hand-computed cases, the check on a real warehouse whose
cache holds two judges' answers with planted disagreements, and the canary stage on a real tiny
model: its keys hold the backend, the curation keys do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from firm_assets.curation.cache import CacheItem, CallSpec, Outcome, run_cached
from firm_assets.curation.canary import (
    MAX_MEAN_ABS_DELTA,
    MIN_EXACT_AGREEMENT,
    canary_check,
    canary_stage,
    compare,
    half_up,
    load_canary,
    score_canary,
)
from firm_assets.curation.parsers import EXECUTION_JSON
from firm_assets.curation.roles import chat_stage
from firm_assets.curation.stage import StageInput, run_chat_stage
from resources.chat import ImagePart, ModelRef
from resources.profiles import get_profile
from warehouse.connection import Warehouse

CANARY = load_canary()
EDIT = list(CANARY.items["edit"])
STAGES = [canary_stage("execution_scores"), canary_stage("consistency_scores")]


def test_the_pinned_canary_loads() -> None:
    assert CANARY.ref == "canary@1"
    assert len(EDIT) == 6 and len(CANARY.items["gen"]) == 6
    assert len(set(EDIT)) == 6


@pytest.mark.parametrize(
    "text, error",
    [("edit: [a]\ngen: [b]\n", "version"), ("version: 1\nedit: []\ngen: [b]\n", "edit"), ("[]", "version")],
)
def test_a_bad_canary_file_is_an_error(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        load_canary(path)


def test_half_up() -> None:
    assert [half_up(x) for x in (1.49, 1.5, 2.5, 4.6, 5.0)] == [1, 2, 3, 5, 5]


def test_compare_hand_computed() -> None:
    previous = {("s", "a"): 4.0, ("s", "b"): 3.0, ("s", "c"): 5.0, ("s", "d"): 1.0}
    current = {("s", "a"): 4.0, ("s", "b"): 1.0, ("s", "c"): 4.6, ("s", "e"): 2.0}
    drift = compare(previous, current)
    # shared a, b, c: |deltas| 0, 2, 0.4 -> mean 0.8; b rounds differently (3 vs 1), c does not (5 vs 5)
    assert drift.compared == 3
    assert drift.mean_abs_delta == pytest.approx(0.8)
    assert drift.exact_agreement == pytest.approx(2 / 3)
    assert drift.moved == [{"stage": "s", "item": "b", "previous": 3.0, "current": 1.0}]
    assert drift.drifted  # 0.8 > 0.75
    calm = compare({("s", "a"): 3.0, ("s", "b"): 3.0}, {("s", "a"): 3.4, ("s", "b"): 2.0})
    assert (calm.mean_abs_delta, calm.exact_agreement) == (pytest.approx(0.7), 0.5)
    assert calm.drifted  # agreement 50% < 60%
    assert not compare({("s", "a"): 3.0}, {("s", "a"): 3.4}).drifted
    assert compare({}, {("s", "a"): 3.0}).compared == 0
    assert MAX_MEAN_ABS_DELTA == 0.75 and MIN_EXACT_AGREEMENT == 0.6


def _score(
    wh: Warehouse,
    judge: str,
    template: str,
    scores: dict[str, float],
    stage: str,
    backend: str = "transformers",
) -> set[str]:
    """Cache the given scores as one judge's canary answers through the real cache (the backend stored
    with the decoding, as `score_canary` does); returns their keys."""
    decoding = {"temperature": 0, "backend": backend}
    spec = CallSpec(stage, ModelRef(judge, "rev-" + judge, backend), template, "score_json@1", decoding)
    items = [CacheItem(sample, {"sample": sample, "stage": stage}, sample) for sample in scores]

    def compute(batch: list[str]) -> list[Outcome]:
        return [Outcome(f"score {scores[s]}", {"score": scores[s], "reasoning": "r"}) for s in batch]

    results, _ = run_cached(wh, spec, items, compute, batch_size=4, run_id=f"run-{judge}")
    return {result.cache_key for result in results.values()}


def test_no_previous_judge_passes_and_says_so(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    keys = _score(wh, "judge-a", "execution_score@1", dict.fromkeys(EDIT, 3.0), STAGES[0])
    result = canary_check(wh, "edit", STAGES, set(EDIT) | {"other"}, keys)
    assert result.passed
    assert result.description == "no previous judge has scored the canary"
    assert result.metadata["compared"].value == 0
    assert result.metadata["canary_found"].value == "6 of 6"


def test_planted_disagreement_between_two_judges_warns_and_lists_the_moved_items(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    old = {item: 4.0 for item in EDIT}
    new = {**old, EDIT[0]: 1.0, EDIT[1]: 2.0, EDIT[2]: 5.0}  # three of six moved
    _score(wh, "judge-a", "execution_score@1", old, STAGES[0])
    keys = _score(wh, "judge-b", "execution_score@1", new, STAGES[0])
    # items outside the canary disagree wildly and must not count
    _score(wh, "judge-a", "execution_score@1", {"outside": 1.0}, STAGES[0])
    keys |= _score(wh, "judge-b", "execution_score@1", {"outside": 5.0}, STAGES[0])
    result = canary_check(wh, "edit", STAGES, set(EDIT) | {"outside"}, keys)
    assert not result.passed and result.severity.value == "WARN"
    meta = {key: value.value for key, value in result.metadata.items()}
    assert meta["compared"] == 6
    assert meta["mean_abs_delta"] == pytest.approx((3 + 2 + 1) / 6)
    assert meta["exact_agreement"] == 0.5
    assert sorted(m["item"] for m in meta["moved"]) == sorted(EDIT[:3])
    assert meta["previous_judge"].startswith("judge-a@") and meta["current_judge"].startswith("judge-b@")


def test_a_template_change_is_a_new_judge_and_agreement_passes(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    old = {item: 3.0 for item in EDIT}
    _score(wh, "judge-a", "execution_score@1", old, STAGES[0])
    keys = _score(wh, "judge-a", "execution_score@2", {**old, EDIT[0]: 3.4}, STAGES[0])
    result = canary_check(wh, "edit", STAGES, set(EDIT), keys)
    assert result.passed
    meta = {key: value.value for key, value in result.metadata.items()}
    assert (meta["compared"], meta["exact_agreement"], meta["moved"]) == (6, 1.0, [])
    assert "execution_score@1" in meta["previous_judge"] and "execution_score@2" in meta["current_judge"]


def test_a_run_without_the_canary_warns(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    result = canary_check(wh, "edit", STAGES, {"someone-else"}, set())
    assert not result.passed and result.severity.value == "WARN"
    assert result.metadata["canary_found"].value == "0 of 6"


def test_the_same_weights_on_another_backend_are_a_new_judge(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    old = {item: 3.0 for item in EDIT}
    _score(wh, "judge-a", "execution_score@1", old, STAGES[0])
    keys = _score(wh, "judge-a", "execution_score@1", {**old, EDIT[0]: 5.0}, STAGES[0], backend="vllm")
    result = canary_check(wh, "edit", STAGES, set(EDIT), keys)
    meta = {key: value.value for key, value in result.metadata.items()}
    assert meta["compared"] == 6 and [m["item"] for m in meta["moved"]] == [EDIT[0]]
    assert meta["previous_judge"].startswith("judge-a@rev-judge-a via transformers execution_score@1")
    assert meta["current_judge"].startswith("judge-a@rev-judge-a via vllm execution_score@1")
    assert '"backend"' not in meta["current_judge"]  # named once, not again inside the decoding


def test_curation_keys_do_not_hold_the_backend() -> None:
    def spec(backend: str) -> CallSpec:
        return CallSpec("s", ModelRef("m", "r", backend), "t@1", "p@1", {"temperature": 0})

    assert spec("transformers").key({"x": 1}) == spec("vllm").key({"x": 1})


def test_the_canary_stage_asks_only_canary_items_with_the_backend_in_its_keys(
    tmp_path: Path, tiny_models, images: list[ImagePart]
) -> None:
    from resources.tiny_models import VL_NAME
    from resources.transformers_backend import TransformersBackend

    wh = Warehouse(tmp_path / "w.duckdb")
    backend = TransformersBackend(str(tiny_models[VL_NAME]))
    profile = get_profile("cpu-tiny")
    stage = chat_stage(profile, "execution_scores", "execution_score", EXECUTION_JSON, "score", scored=True)
    variables = {"instruction": "make it blue", "requirement": "none", "difference_caption": "it is blue"}
    inputs = [
        StageInput(sample, variables, {"source": images[0], "edited": images[i]})
        for i, sample in enumerate([EDIT[0], EDIT[1], "not-in-the-canary"])
    ]
    curation, _ = run_chat_stage(stage, backend, inputs, wh, 4, "run-1")
    keys, stats = score_canary("edit", stage, backend, inputs, wh, 4, "run-1")
    assert (stats.stage, stats.rows, stats.model_calls) == (STAGES[0], 2, 2)
    assert len(keys) == 2 and not keys & {result.cache_key for result in curation.values()}
    rows = wh.rows(
        "SELECT sample_id, json_extract_string(decoding, '$.backend') FROM inference_cache"
        " WHERE cache_key IN (SELECT unnest(?)) ORDER BY sample_id",
        [sorted(keys)],
    )
    assert rows == sorted([(EDIT[0], "transformers"), (EDIT[1], "transformers")])
    again, stats = score_canary("edit", stage, backend, inputs, wh, 4, "run-2")
    assert again == keys and (stats.model_calls, stats.cache_hits) == (0, 2)
