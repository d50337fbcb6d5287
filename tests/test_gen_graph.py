"""The FIRM-Gen chain materialized end to end on tiny real models, real DuckDB and real MLflow.

The end-to-end run is the session's curated gen chain (`curated_gen`); the re-run tests start from
their own copy of its home (`gen_home`)."""

import json
from pathlib import Path

import polars as pl
from curated import Curated
from graph_runs import (
    gen_config,
    home_warehouse,
    materialize_group,
    materialize_with_edited_template,
    metadata,
    model_calls,
)
from mlflow import MlflowClient

from firm_assets.curation.parsers import CHECKLIST_CATEGORIES, PLAN_THEN_SCORE
from firm_assets.gen.checklists import numbered_checklist
from firm_assets.gen.prompts import DEMO_FILES
from resources.tracking import default_tracking_uri


def test_demo_gen_chain_end_to_end(curated_gen: Curated, gen_home: Path) -> None:
    result = curated_gen.result
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert all(passed for name, passed in checks.items() if name != "gen_checklists_geneval_coverage"), checks
    wh = home_warehouse()
    prompts = wh.query("SELECT * FROM assets.gen_prompts")
    assert prompts.height == 10 and prompts["geneval"].drop_nulls().len() == 6

    checklists = wh.query("SELECT * FROM assets.gen_checklists")
    assert checklists.height == 10 and checklists["items"].null_count() == 0
    for row in checklists.iter_rows(named=True):
        items = json.loads(row["items"])
        assert len(items) == row["n_items"] >= 1
        assert all(i["category"] in CHECKLIST_CATEGORIES and i["question"].endswith("?") for i in items)
    geneval_ids = set(prompts.filter(pl.col("geneval").is_not_null())["prompt_id"])
    covered = checklists.filter(pl.col("geneval_coverage").is_not_null())
    assert set(covered["prompt_id"]) == geneval_ids
    assert covered["geneval_coverage"].is_between(0, 1).all()

    images = wh.query("SELECT * FROM assets.generated_images")
    assert images.height == 10 * 2
    assert set(images["generator"]) == {"tiny:tiny-sd3"} and sorted(set(images["seed"])) == [0, 1]
    assert images["image_sha"].n_unique() == 20  # every seed and prompt gives a different image

    scores = wh.query("SELECT * FROM assets.gen_scores")
    assert scores.height == 20
    assert scores["if_score"].is_in([1.0, 2.0, 3.0, 4.0, 5.0]).all()
    for row in scores.join(checklists, on="prompt_id").iter_rows(named=True):
        verdicts = json.loads(row["verdicts"])
        assert [v["item"] for v in verdicts] == list(range(1, row["n_items"] + 1))
        assert all(v["verdict"] in ("yes", "no", None) for v in verdicts)
        assert len(row["quality_scores"]) == 3 and row["quality_score"] == min(row["quality_scores"])

    dataset = wh.query("SELECT * FROM dataset_versions WHERE dataset = 'firm_gen'")
    assert dataset.height == 1 and dataset["n_samples"][0] == 20
    folder = Path(dataset["export_path"][0])
    instruction = json.loads((folder / "gen_instruction.json").read_text())
    quality = json.loads((folder / "gen_quality.json").read_text())
    assert len(instruction) == len(quality) == 20
    # the critic learns plan-then-score: the judge's answered checklist items, analysis, then the box
    rows = pl.read_parquet(folder / "data.parquet").sort("sample_id")
    for record, row in zip(instruction, rows.iter_rows(named=True), strict=True):
        answer = PLAN_THEN_SCORE.parse(record["messages"][-1]["content"])
        answered = [v for v in json.loads(row["verdicts"]) if v["verdict"] is not None]
        assert [v["verdict"] for v in answer["verdicts"]] == [v["verdict"] for v in answered]
        assert answer["score"] == row["if_score"] and record["images"][0].endswith(
            Path(row["image_path"]).name
        )
    assert all(len(json.loads(r["messages"][-1]["content"])["score"]) == 3 for r in quality)
    assert all(
        (folder.parent.parent / r["images"][0]).is_file()
        and r["messages"][1]["content"].startswith("<image>")
        for r in instruction
    )
    members = wh.query("SELECT * FROM dataset_members WHERE dataset = 'firm_gen'")
    keys = wh.query("SELECT cache_key, stage FROM inference_cache")
    stages = members.explode("cache_keys").join(keys, left_on="cache_keys", right_on="cache_key")
    assert set(stages["stage"]) == {
        "generated_images",
        "gen_checklists",
        "gen_instruction_following",
        "gen_quality",
    }
    run = MlflowClient(default_tracking_uri()).get_run(dataset["mlflow_run_id"][0])
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [dataset["version"][0]]
    assert metadata(result, "firm_gen_dataset")["dataset_version"] == dataset["version"][0]


def test_editing_one_prompt_recomputes_only_that_prompt(gen_home: Path, tmp_path: Path) -> None:
    jsonl, text = (tmp_path / DEMO_FILES[0].name, tmp_path / DEMO_FILES[1].name)
    jsonl.write_text(DEMO_FILES[0].read_text())
    text.write_text(DEMO_FILES[1].read_text())
    materialize_group("gen", gen_config(jsonl, text))
    unchanged = materialize_group("gen", gen_config(jsonl, text))
    assert set(model_calls(unchanged).values()) == {0}

    lines = text.read_text().splitlines()
    lines[0] = lines[0] + " under a full moon"
    text.write_text("\n".join(lines) + "\n")
    result = materialize_group("gen", gen_config(jsonl, text))
    seeds = 2
    assert model_calls(result) == {
        "gen_checklists": 1,
        "generated_images": seeds,
        "if": seeds,
        "quality": seeds,
        "gen_canary": 0,  # canary items are unchanged (cache hits) or not among these prompts
    }


def test_changing_the_checklist_template_replans_but_never_rerenders(
    curated_gen: Curated, gen_home: Path, tmp_path: Path, monkeypatch
) -> None:
    first = curated_gen.result
    before = home_warehouse().query("SELECT prompt_id, items FROM assets.gen_checklists")
    second = materialize_with_edited_template(
        "gen", monkeypatch, tmp_path / "templates", "checklist_plan", "atomic requirement", "single one"
    )
    calls = model_calls(second)
    assert calls["gen_checklists"] == metadata(first, "gen_checklists")["rows"] == 10
    assert calls["generated_images"] == 0 and calls["quality"] == 0
    # images whose checklist, as the scoring prompt shows it, changed are re-scored (a random planner may
    # write the same questions, differing only in the "item" field the prompt does not show);
    # prompt-free quality is not
    after = home_warehouse().query("SELECT prompt_id, items FROM assets.gen_checklists")
    changed = [
        prompt_id
        for prompt_id, old, new in before.join(after, on="prompt_id").iter_rows()
        if numbered_checklist(old) != numbered_checklist(new)
    ]
    images = home_warehouse().query("SELECT prompt_id FROM assets.gen_scores")
    assert calls["if"] == images.filter(pl.col("prompt_id").is_in(changed)).height > 0


def test_changing_the_quality_template_rescores_quality_only(
    curated_gen: Curated, gen_home: Path, tmp_path: Path, monkeypatch
) -> None:
    first = curated_gen.result
    second = materialize_with_edited_template(
        "gen", monkeypatch, tmp_path / "templates", "gen_quality_score", "on its own", "by itself"
    )
    # plans, images and instruction-following verdicts are cache hits; every quality score is asked
    # again, and the canary's quality answers with it
    assert model_calls(second) == {
        "gen_checklists": 0,
        "generated_images": 0,
        "if": 0,
        "quality": metadata(first, "gen_scores")["rows"],
        "gen_canary": metadata(first, "gen_scores")["gen_canary_model_calls"] // 2,
    }
    assert metadata(first, "gen_scores")["rows"] == 20
    assert metadata(first, "gen_scores")["gen_canary_model_calls"] > 0
