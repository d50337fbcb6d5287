"""RL policies as assets: the pure parts (drift rules, divergence monitors, step history, grids, prompt
groups, versions) on hand-computed cases, then a real materialize of both policies on the tiny models
(curation -> critics -> DiffusionNFT through Pipes -> MLflow -> lineage -> audit), and a second
materialize that skips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from curated import Curated, point_at, relocate
from dagster import AssetSelection, materialize
from mlflow import MlflowClient
from PIL import Image

from firm_assets.critics.rewards import Reward, RewardConfig
from firm_assets.critics.scoring import DimensionScore, EditScores, GenScores
from firm_assets.definitions import ASSETS, CHECKS, build_resources, defs
from firm_assets.rl.assets import EDIT_POLICY, GEN_POLICY
from firm_assets.rl.checks import (
    BRIGHTNESS_SHIFT,
    NEAR_BLACK_RISE,
    RULES,
    drift,
    drift_failures,
    end_means,
)
from firm_assets.rl.critic_reward import (
    DIVERGENCE,
    dimension_divergence,
    dimension_means,
    reward_divergence,
)
from firm_assets.rl.grids import sample_grid
from firm_assets.rl.launch import EXPERIMENT, policy_version, prompt_set, prompt_set_version
from firm_assets.rl.nft.records import Rollout, StepLog
from firm_assets.rl.settings import RLPolicyConfig, nft_settings, reward_settings
from firm_assets.rl.train import StepTracker, append_history, build_reward_fn, read_history, step_metrics
from firm_assets.trainer_launch import open_run
from resources.home import warehouse_path
from resources.profiles import PolicyConfig, get_profile
from resources.tracking import TrackingResource, default_tracking_uri
from warehouse.connection import Warehouse
from warehouse.lineage import find_policy_versions

REPO = Path(__file__).resolve().parent.parent
# the module fixture may be the first to ask for the session's main job (curation, two critic SFTs,
# the bench and two RL runs): more than the default per test on a loaded machine
pytestmark = pytest.mark.timeout(1500)
POLICIES = (EDIT_POLICY.name, GEN_POLICY.name)


def _ok(score: float) -> DimensionScore:
    return DimensionScore(score, None)


FAILED = DimensionScore(None, "no score digit in the answer")


def _history(series: dict[str, list[float]]) -> pl.DataFrame:
    rows = [
        (step, metric, value) for metric, values in series.items() for step, value in enumerate(values, 1)
    ]
    return pl.DataFrame(
        rows, schema={"step": pl.Int64, "metric": pl.String, "value": pl.Float64}, orient="row"
    )


STEADY = {
    "near_black_fraction": [0.01, 0.02, 0.01, 0.02],
    "brightness": [0.50, 0.52, 0.49, 0.51],
    "saturation": [0.30, 0.31, 0.30, 0.29],
    "colour_entropy": [4.0, 3.9, 4.1, 4.0],
    DIVERGENCE: [0.10, 0.12, 0.11, 0.13],
}


# drift rules


def test_end_means_use_a_window_of_at_most_half_the_run() -> None:
    assert end_means([1.0]) == (1.0, 1.0)
    assert end_means([1.0, 3.0]) == (1.0, 3.0)
    assert end_means([1.0, 2.0, 4.0, 8.0, 16.0]) == (1.5, 12.0)  # window 2
    assert end_means([1.0] * 3 + [0.0] * 4 + [4.0] * 3) == (1.0, 4.0)  # window DRIFT_WINDOW = 3


def test_drift_kinds() -> None:
    rise, shift, drop = (
        next(r for r in RULES if r.kind == kind) for kind in ("rise", "shift", "relative_drop")
    )
    assert drift(rise, [0.1, 0.4]) == pytest.approx(0.3)
    assert drift(rise, [0.4, 0.1]) == pytest.approx(-0.3)
    assert drift(shift, [0.6, 0.4]) == pytest.approx(0.2)
    assert drift(drop, [4.0, 3.0]) == pytest.approx(0.25)
    assert drift(drop, [0.0, 0.0]) == 0.0


def test_steady_monitors_pass() -> None:
    failures, drifts = drift_failures(_history(STEADY))
    assert failures == []
    assert drifts["brightness"] == pytest.approx(0.01)  # |mean(.49,.51) - mean(.50,.52)|


@pytest.mark.parametrize(
    ("metric", "values", "reason"),
    [
        (
            "near_black_fraction",
            [0.0, 0.0, NEAR_BLACK_RISE + 0.1, NEAR_BLACK_RISE + 0.1],
            "near_black_fraction: rise 0.300",
        ),
        (
            "brightness",
            [0.5, 0.5, 0.5 + BRIGHTNESS_SHIFT + 0.05, 0.5 + BRIGHTNESS_SHIFT + 0.05],
            "brightness: shift 0.200",
        ),
        ("brightness", [0.5, 0.5, 0.2, 0.2], "brightness: shift 0.300"),
        ("saturation", [0.3, 0.3, 0.9, 0.9], "saturation: shift 0.600"),
        ("colour_entropy", [4.0, 4.0, 1.0, 1.0], "colour_entropy: relative_drop 0.750"),
        (DIVERGENCE, [0.1, 0.1, 0.6, 0.7], f"{DIVERGENCE}: rise 0.550"),
    ],
)
def test_each_drift_past_its_threshold_fails(metric: str, values: list[float], reason: str) -> None:
    failures, _ = drift_failures(_history({**STEADY, metric: values}))
    assert len(failures) == 1 and failures[0].startswith(reason), failures


def test_a_monitor_without_values_fails_instead_of_passing() -> None:
    failures, drifts = drift_failures(_history({k: v for k, v in STEADY.items() if k != DIVERGENCE}))
    assert failures == [f"{DIVERGENCE}: no values recorded"] and DIVERGENCE not in drifts
    assert len(drift_failures(_history({}))[0]) == len(RULES)


# reward-hacking monitors from critic scores


def test_dimension_divergence_and_means_skip_failed_answers() -> None:
    edit = [
        EditScores(_ok(5.0), _ok(1.0)),  # gap 4 -> 1.0
        EditScores(_ok(3.0), _ok(4.0)),  # gap 1 -> 0.25
        EditScores(FAILED, _ok(2.0)),  # not compared
    ]
    assert dimension_divergence("edit", edit) == pytest.approx(0.625)
    assert dimension_means("edit", edit) == {
        "score_execution": pytest.approx(4.0),
        "score_consistency": pytest.approx(7 / 3),
    }
    gen = [GenScores(_ok(2.0), _ok(2.0)), GenScores(_ok(4.0), FAILED)]
    assert dimension_divergence("gen", gen) == 0.0
    assert dimension_means("gen", gen) == {"score_instruction": 3.0, "score_quality": 2.0}
    assert dimension_divergence("gen", [GenScores(FAILED, _ok(3.0))]) is None
    assert dimension_means("edit", [EditScores(FAILED, FAILED)]) == {}


def test_reward_divergence_compares_only_items_both_critics_rewarded() -> None:
    masked = Reward(None, True, "execution failed")
    trained = [Reward(0.8, False, None), Reward(0.2, False, None), masked]
    held_out = [Reward(0.5, False, None), masked, Reward(0.9, False, None)]
    assert reward_divergence(trained, held_out) == pytest.approx(0.3)
    assert reward_divergence([masked], [masked]) is None


# step history and metrics


def _step(step: int, reward_mean: float | None) -> StepLog:
    return StepLog(
        step=step,
        loss=0.5 if reward_mean is not None else float("nan"),
        reward_mean=reward_mean,
        reward_std=None if reward_mean is None else 0.1,
        masked_fraction=1.0 if reward_mean is None else 0.0,
        grad_norm=2.0,
        monitors={"brightness": 0.4},
        samples=[],
        images=4,
    )


def test_a_resumed_run_reports_progress_over_the_steps_it_has_left(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FIRM_HOME", str(tmp_path))
    tracking = TrackingResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged: list[str] = []
    run_id = tracking.create_run("firm-rl-progress", "resumed", {})
    tracker = StepTracker(tracking, run_id, tmp_path / "history.jsonl", 100, 10, logged.append)
    for step in (7, 8, 9, 10):  # resumed from the checkpoint of step 6 of 10
        tracker(_step(step, 0.5))
    assert [line for line in logged if line.startswith("progress")] == [
        "progress 1/4 steps",
        "progress 2/4 steps",
        "progress 3/4 steps",
        "progress 4/4 steps",
    ]
    assert tracker.steps == [7, 8, 9, 10]


def test_a_resumed_run_continues_its_mlflow_run(tmp_path: Path, monkeypatch) -> None:
    """The steps of a killed attempt and of its resume land in one MLflow run, one curve."""
    monkeypatch.setenv("FIRM_HOME", str(tmp_path))
    tracking = TrackingResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    folder = tmp_path / "gen_rl_policy" / "v1"
    folder.mkdir(parents=True)
    params = folder / "params.json"
    run_id, reopened = open_run(tracking, EXPERIMENT, "gen-v1", {"dagster.run_id": "first"}, params)
    assert not reopened
    params.write_text(json.dumps({"mlflow_run_id": run_id}))
    tracking.log_values(run_id, {}, {"loss": 0.5}, step=1)
    tracking.finish(run_id, "FAILED")  # the attempt was killed

    again, reopened = open_run(tracking, EXPERIMENT, "gen-v1", {"dagster.run_id": "second"}, params)
    assert (again, reopened) == (run_id, True)
    tracking.log_values(run_id, {}, {"loss": 0.4}, step=2)
    run = tracking.client().get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["firm.reopened_by_run"] == "second"
    assert [m.step for m in tracking.client().get_metric_history(run_id, "loss")] == [1, 2]

    tracking.finish(run_id)  # a finished run is never reopened: a new attempt gets a new run
    assert open_run(tracking, EXPERIMENT, "gen-v1", {}, params)[0] != run_id


def test_a_data_parallel_run_refuses_a_critic_pinned_to_one_gpu(monkeypatch) -> None:
    """Every rank would load the critic onto that one GPU: the trainer says to use the reward server."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    params = {"reward_server": "", "critic": {"device": "cuda:1"}, "nft": {"device": "cuda"}}
    with pytest.raises(ValueError, match="score a data-parallel run through `firm serve`"):
        build_reward_fn(params, {})


def test_step_metrics_leave_out_rewards_of_a_fully_masked_step() -> None:
    assert step_metrics(_step(1, 0.6)) == {
        "masked_fraction": 0.0,
        "grad_norm": 2.0,
        "loss": 0.5,
        "reward_mean": 0.6,
        "reward_std": 0.1,
        "brightness": 0.4,
    }
    masked = step_metrics(_step(2, None))
    assert masked == {"masked_fraction": 1.0, "grad_norm": 2.0, "brightness": 0.4}


def test_read_history_keeps_the_redone_step_and_drops_steps_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "steps.jsonl"
    assert read_history(path, 5) == []
    for step, loss in ((1, 1.0), (2, 2.0), (3, 3.0), (3, 30.0)):  # step 3 redone after a resume
        append_history(path, step, {"loss": loss})
    append_history(path, 4, {"loss": 4.0})
    with path.open("a") as handle:
        handle.write('{"step": 5, "metr')  # torn line of a killed writer
    assert read_history(path, 3) == [
        {"step": 1, "metrics": {"loss": 1.0}},
        {"step": 2, "metrics": {"loss": 2.0}},
        {"step": 3, "metrics": {"loss": 30.0}},
    ]


def test_sample_grid_rows_are_prompt_groups_with_the_source_first() -> None:
    red, green, blue = (Image.new("RGB", (16, 16), c) for c in ("red", "green", "blue"))
    rollouts = [
        Rollout("a", "make it green", red, green, 0),
        Rollout("b", "make it blue", red, blue, 1),
        Rollout("a", "make it green", red, blue, 2),
    ]
    grid = sample_grid(rollouts, tile=8)
    assert grid.size == (24, 16)  # rows a, b; a has source + 2 images
    assert [grid.getpixel((x * 8 + 4, 4)) for x in range(3)] == [(255, 0, 0), (0, 128, 0), (0, 0, 255)]
    assert grid.getpixel((12, 12)) == (0, 0, 255) and grid.getpixel((20, 12)) == (255, 255, 255)
    assert sample_grid([Rollout("g", "a cat", None, green, 0)], tile=8).size == (8, 8)
    with pytest.raises(ValueError, match="no rollouts"):
        sample_grid([])


# prompt groups, settings and versions


def _sources(rows: list[tuple[str, str, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "request_id": f"r{i}",
                "instruction": ins,
                "requirement": req,
                "source_sha": sha,
                "source_path": f"/x/{i}.png",
            }
            for i, (ins, sha, req) in enumerate(rows)
        ]
    )


def test_edit_groups_are_keyed_by_instruction_and_source_image() -> None:
    frame = _sources(
        [("add a hat", "s1", None), ("add a hat", "s2", "keep the face"), ("add a hat", "s1", "other")]
    )
    groups = prompt_set(EDIT_POLICY, frame)
    assert groups.height == 2 and sorted(groups["source_sha"]) == ["s1", "s2"]
    first = groups.filter(pl.col("source_sha") == "s1").row(0, named=True)
    assert first["requirement"] is None and first["text"] == "add a hat"  # the first request's
    moved = frame.with_columns(pl.lit("/elsewhere.png").alias("source_path"))
    assert prompt_set_version(prompt_set(EDIT_POLICY, moved)) == prompt_set_version(groups)
    reordered = prompt_set(EDIT_POLICY, frame.reverse())
    assert prompt_set_version(reordered) != prompt_set_version(groups)  # another first requirement


def test_gen_groups_are_the_prompts() -> None:
    frame = pl.DataFrame({"prompt_id": ["p2", "p1"], "prompt": ["a dog", "a cat"], "source": ["f", "f"]})
    groups = prompt_set(GEN_POLICY, frame)
    assert groups["prompt_id"].to_list() == ["p1", "p2"] and groups["text"].to_list() == ["a cat", "a dog"]
    assert groups["source_sha"].null_count() == 2
    assert prompt_set_version(groups) == prompt_set_version(prompt_set(GEN_POLICY, frame.reverse()))


def test_settings_take_the_profile_then_the_run() -> None:
    policy = PolicyConfig(
        "tiny:tiny-sd3",
        {
            "steps": 2,
            "group_size": 2,
            "learning_rate": 0.001,
            "prompts_per_step": 1,
            "sampling_steps": 2,
            "size": 32,
        },
    )
    merged = nft_settings("gen", "/models/sd3", policy, RLPolicyConfig(steps=5))
    picked = {
        "steps": 5,
        "group_size": 2,
        "learning_rate": 0.001,
        "task": "gen",
        "pipeline_path": "/models/sd3",
    }
    assert {key: merged[key] for key in picked} == picked
    # the settings nobody gave are recorded at the reference's defaults (and so enter the version)
    assert (merged["solver"], merged["old_decay_max"], merged["ema_decay"]) == ("dpm_solver_2", 0.5, 0.9)
    assert reward_settings("edit", RLPolicyConfig()) == RewardConfig.cme()
    assert reward_settings("gen", RLPolicyConfig()) == RewardConfig.qma()
    custom = reward_settings("edit", RLPolicyConfig(formula="naive_sum", w2=0.9, normalisation="over5"))
    assert (custom.formula, custom.w1, custom.w2, custom.normalisation) == ("naive_sum", 0.6, 0.9, "over5")
    tiny = get_profile("cpu-tiny").rl
    assert tiny["edit"].model == "tiny:tiny-flux-kontext" and tiny["gen"].model == "tiny:tiny-sd3"
    # the gpu profile has FIRM's trainer settings (VisionXLab/FIRM-Reward editing/ and generation/ configs)
    gpu = get_profile("gpu").rl
    edit = nft_settings("edit", "kontext", gpu["edit"], RLPolicyConfig())
    gen = nft_settings("gen", "sd35", gpu["gen"], RLPolicyConfig())
    picked = (
        "prompts_per_step",
        "group_size",
        "sampling_steps",
        "size",
        "learning_rate",
        "lora_rank",
        "lora_alpha",
    )
    assert [edit[key] for key in picked] == [8, 24, 6, 512, 1.5e-3, 32, 64]
    assert [gen[key] for key in picked] == [48, 24, 10, 512, 3e-4, 32, 64]
    assert edit["solver"] == gen["solver"] == "dpm_solver_2" and gpu["gen"].critic_device == "cuda:1"


def test_policy_version_changes_with_every_input() -> None:
    args = ("tiny:tiny-sd3", "rev1", "critic1", '{"formula": "qma"}', "prompts1", {"steps": 2})
    base = policy_version(*args)
    assert policy_version(*args) == base
    for index, other in enumerate(("m2", "rev2", "critic2", '{"formula": "cme"}', "prompts2", {"steps": 3})):
        changed = list(args)
        changed[index] = other
        assert policy_version(*changed) != base, index
    # a setting that never changes the weights leaves the version alone; the sampler changes it
    assert policy_version(*args[:5], {"steps": 2, "checkpoint_every": 7}) == base
    assert policy_version(*args[:5], {"steps": 2, "solver": "euler"}) != base


# the real graph


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory: pytest.TempPathFactory, curated_main: Curated):
    """Both chains, both critics and both policies on the cpu-tiny profile (the session's main job),
    then, in a copy of its home, a second run of the rl group alone (same inputs: both policies must
    skip)."""
    home = relocate(curated_main.home, tmp_path_factory.mktemp("rl") / "firm-home")
    with pytest.MonkeyPatch.context() as patch:
        point_at(home, patch)
        second = materialize(
            [*ASSETS, *CHECKS], resources=build_resources(), selection=AssetSelection.groups("rl")
        )
        yield home, curated_main.result, second, Warehouse(Path(warehouse_path()))


def _metadata(result, asset: str) -> dict:
    (materialization,) = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in materialization.metadata.items()}


def test_policies_train_log_to_mlflow_and_register(rl_run) -> None:
    _, first, _, wh = rl_run
    assert first.success
    client = MlflowClient(default_tracking_uri(), registry_uri=default_tracking_uri())
    policies = wh.query("SELECT * FROM policy_versions ORDER BY policy")
    assert policies["policy"].to_list() == sorted(POLICIES)
    critics = dict(wh.rows("SELECT critic, version FROM critics"))
    for row in policies.iter_rows(named=True):
        assert _metadata(first, row["policy"])["trained"] is True
        assert row["critic_version"] == critics[row["critic"]] and row["dagster_run_id"] == first.run_id
        assert (
            row["final_step"] == 2 and Path(row["lora_path"]).is_dir() and Path(row["ema_lora_path"]).is_dir()
        )
        history = {
            name: client.get_metric_history(row["mlflow_run_id"], name)
            for name in ("loss", "reward_mean", "masked_fraction", "brightness", "near_black_fraction")
        }
        for name, values in history.items():
            assert [m.step for m in values] == [1, 2], name
        assert all(0.0 <= m.value <= 1.0 for m in history["reward_mean"])
        monitors = wh.query(
            "SELECT DISTINCT metric FROM policy_monitors WHERE policy = ? AND version = ?",
            [row["policy"], row["version"]],
        )
        assert {r.metric for r in RULES} <= set(monitors["metric"])
        artifacts = {a.path for a in client.list_artifacts(row["mlflow_run_id"], "samples")}
        assert artifacts == {"samples/step_00001.png", "samples/step_00002.png"}
        version = client.get_model_version(row["policy"], row["model_version"])
        assert version.run_id == row["mlflow_run_id"] and version.tags["policy_version"] == row["version"]
        assert version.tags["critic_version"] == row["critic_version"]
        assert version.tags["prompt_set_version"] == row["prompt_set_version"]
        registered = {a.path for a in client.list_artifacts(row["mlflow_run_id"], "policy")}
        assert {"policy/lora", "policy/ema_lora", "policy/policy.json"} <= registered
        reward = json.loads(row["reward"])
        expected = RewardConfig.cme() if row["policy"] == EDIT_POLICY.name else RewardConfig.qma()
        assert (reward["formula"], reward["w1"], reward["w2"]) == (expected.formula, expected.w1, expected.w2)
    drift_checks = [c for c in first.get_asset_check_evaluations() if c.check_name == "monitor_drift"]
    assert sorted(c.asset_key.to_user_string() for c in drift_checks) == sorted(POLICIES)
    for check in drift_checks:  # evaluated on the recorded monitors: every rule has a drift value
        assert {f"drift_{rule.metric}" for rule in RULES} <= set(check.metadata), check.metadata
        print(check.asset_key.to_user_string(), check.passed, check.description)


def test_lineage_names_critic_and_prompt_set(rl_run) -> None:
    _, _, _, wh = rl_run
    edit = find_policy_versions(wh, EDIT_POLICY.name).row(0, named=True)
    groups = wh.rows("SELECT count(DISTINCT (instruction, source_sha)) FROM assets.source_images")[0][0]
    assert edit["n_prompts"] == groups and edit["prompt_set"] == "source_images"
    assert edit["critic_dataset"] == "firm_edit"
    assert (
        edit["critic_dataset_version"]
        == wh.rows("SELECT version FROM dataset_versions WHERE dataset = 'firm_edit'")[0][0]
    )
    gen = find_policy_versions(wh, GEN_POLICY.name).row(0, named=True)
    assert gen["n_prompts"] == wh.rows("SELECT count(*) FROM assets.gen_prompts")[0][0]


def test_cli_audit_policy_answers_which_critic_data_and_prompts(rl_run) -> None:
    home, _, _, wh = rl_run
    row = find_policy_versions(wh, GEN_POLICY.name).row(0, named=True)
    env = {**os.environ, "FIRM_HOME": str(home)}
    command = [
        sys.executable,
        "-m",
        "firm_assets.cli",
        "audit",
        "policy",
        GEN_POLICY.name,
        "--version",
        row["version"][:6],
    ]
    audit = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stderr
    lines = audit.stdout.splitlines()
    assert f"policy {GEN_POLICY.name} version {row['version']}" in lines
    assert any(
        line.startswith(f"  critic: firm_gen_critic version {row['critic_version']}") for line in lines
    )
    assert any(
        f"trained on dataset firm_gen version {row['critic_dataset_version']}" in line for line in lines
    )
    assert (
        f"  prompts: gen_prompts version {row['prompt_set_version']} ({row['n_prompts']} prompt groups)"
        in lines
    )
    assert "  reward: qma w1=0.4 w2=0.6 normalisation=minus1_over4 score=expectation" in lines
    assert f"  registered model {GEN_POLICY.name} version {row['model_version']}" in lines
    missing = subprocess.run(
        [*command[:-1], "ffff"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 1 and missing.stdout == ""


def test_second_materialize_skips_existing_versions(rl_run) -> None:
    _, first, second, wh = rl_run
    assert second.success
    for policy in POLICIES:
        again = _metadata(second, policy)
        assert again["trained"] is False
        assert again["policy_version"] == _metadata(first, policy)["policy_version"]
    assert wh.rows("SELECT count(*) FROM policy_versions")[0][0] == 2
    client = MlflowClient(default_tracking_uri())
    experiment = client.get_experiment_by_name("firm-rl")
    assert len(client.search_runs([experiment.experiment_id])) == 2  # no run for a skip


def _cost_rows(wh: Warehouse, run_id: str) -> dict[str, dict]:
    """This run's cost per asset: the materialization's seconds and its model lines summed (None
    figures where it has no model line)."""
    costs = wh.query(
        "SELECT m.asset_key, m.data_version, m.wall_seconds, m.cpu_seconds, m.gpu_seconds,"
        " count(c.stage) AS lines, any_value(c.stage) AS stage, any_value(c.backend) AS backend,"
        " sum(c.model_calls) AS calls, sum(c.model_seconds) AS seconds, sum(c.tokens_in) AS tokens_in,"
        " sum(c.tokens_out) AS tokens_out, sum(c.images_generated) AS images"
        " FROM materialization_costs m LEFT JOIN model_costs c USING (dagster_run_id, asset_key)"
        " WHERE dagster_run_id = ? GROUP BY ALL",
        [run_id],
    )
    return {row["asset_key"]: row for row in costs.iter_rows(named=True)}


def test_critic_and_policy_training_record_their_costs(rl_run) -> None:
    _, first, second, wh = rl_run
    costs = _cost_rows(wh, first.run_id)
    for critic in ("firm_edit_critic", "firm_gen_critic"):
        row, meta = costs[critic], _metadata(first, critic)
        assert row["data_version"] == meta["critic_version"] and (row["stage"], row["lines"]) == ("sft", 1)
        assert row["calls"] == meta["updates"] > 0  # optimizer updates of this (unresumed) run
        # the trainer's CPU time is the child's, counted in the asset's; its wall time is inside the body's
        assert row["cpu_seconds"] > 0 and 0 < row["seconds"] <= row["wall_seconds"]
        assert row["gpu_seconds"] == 0.0  # cpu-tiny trains on the CPU
        assert row["tokens_in"] == meta["tokens_in"] >= meta["examples"] - meta["val_examples"]
        assert row["tokens_out"] == 0 and row["images"] == 0
    profile = get_profile("cpu-tiny").rl
    for spec in (EDIT_POLICY, GEN_POLICY):
        row, meta = costs[spec.name], _metadata(first, spec.name)
        nft = nft_settings(spec.task, "", profile[spec.task], RLPolicyConfig())
        rollouts = nft["steps"] * nft["prompts_per_step"] * nft["group_size"]
        assert row["data_version"] == meta["policy_version"]
        assert (row["stage"], row["backend"], row["lines"]) == ("nft", "diffusers", 1)
        assert row["images"] == row["calls"] == meta["images_generated"] == rollouts
        assert row["cpu_seconds"] > 0 and 0 < row["seconds"] <= row["wall_seconds"]
        assert row["gpu_seconds"] == 0.0 and row["tokens_in"] == row["tokens_out"] == 0
    # the second run found both policies: a cost row each, with seconds and no model line
    skipped = _cost_rows(wh, second.run_id)
    assert set(skipped) == set(POLICIES)
    for policy in POLICIES:
        assert skipped[policy]["lines"] == 0 and skipped[policy]["wall_seconds"] > 0
        assert skipped[policy]["data_version"] == costs[policy]["data_version"]


def test_rl_job_selects_only_the_policies() -> None:
    job = defs.resolve_job_def("rl")
    assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == set(POLICIES)
