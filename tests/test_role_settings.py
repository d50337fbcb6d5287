"""Each role set on its own by run config, and a user's profiles file laid over the packaged ones:
the merge rules unit-tested, then one real `firm run` whose run config sends the judge alone to an
OpenAI-compatible server (the tiny VL model behind real HTTP) under a profile from the user's file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from loopback import LoopbackServer, ModelHandler, model_entry

from resources.models import ModelsResource
from resources.profiles import PROFILES_FILE_ENV, get_profile, merged
from resources.tiny_models import VL_NAME
from resources.transformers_backend import TransformersBackend

REPO = Path(__file__).resolve().parents[1]
USER_PROFILES = """
cpu-tiny:            # a packaged profile, changed in two places
  seeds: [0]
  judge: {batch_size: 3}
my-remote:           # a new one, starting from the packaged gpu profile
  extends: gpu
  planner: {model: my/planner}
"""


def test_merged_lays_mappings_key_by_key_and_replaces_the_rest() -> None:
    base = {"a": {"x": 1, "y": 2}, "b": [1, 2], "c": 3}
    assert merged(base, {"a": {"y": 5}, "b": [9]}) == {"a": {"x": 1, "y": 5}, "b": [9], "c": 3}
    assert merged(None, {"a": 1}) == {"a": 1}


def test_a_user_profiles_file_extends_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = get_profile("cpu-tiny")
    path = tmp_path / "profiles.yaml"
    path.write_text(USER_PROFILES)
    monkeypatch.setenv(PROFILES_FILE_ENV, str(path))
    tiny = get_profile("cpu-tiny")
    assert tiny.seeds == (0,) and tiny.judge.batch_size == 3
    assert tiny.judge.model == packaged.judge.model and tiny.captioner == packaged.captioner
    remote = get_profile("my-remote")
    assert (
        remote.planner.model == "my/planner" and remote.planner.backend == get_profile("gpu").planner.backend
    )
    assert remote.judge == get_profile("gpu").judge

    path.write_text("broken:\n  extends: nowhere\n")
    monkeypatch.setenv(PROFILES_FILE_ENV, str(tmp_path / "other.yaml"))  # a new path: read afresh
    (tmp_path / "other.yaml").write_text("broken:\n  extends: nowhere\n")
    with pytest.raises(ValueError, match="extends 'nowhere', which is not a profile"):
        get_profile("cpu-tiny")
    monkeypatch.setenv(PROFILES_FILE_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="cannot read the profiles file"):
        get_profile("cpu-tiny")
    monkeypatch.setenv(PROFILES_FILE_ENV, str(tmp_path / "odd.yaml"))
    (tmp_path / "odd.yaml").write_text("cpu-tiny:\n  judge: {colour: red}\n")
    with pytest.raises(ValueError, match="unknown setting"):
        get_profile("cpu-tiny")


def test_packaged_profiles_reuse_one_definition_of_each_shared_block() -> None:
    """profiles.yaml says each shared block once (YAML anchors): the server profiles take the gpu
    profile's image models, curation settings, critic and RL settings, and change only what they list."""
    gpu, server, k8s = get_profile("gpu"), get_profile("vllm-server"), get_profile("k8s-vllm")
    for profile in (server, k8s):
        assert (profile.editors, profile.generators, profile.seeds) == (
            gpu.editors,
            gpu.generators,
            (0, 1, 2),
        )
        assert (profile.max_new_tokens, profile.critic, profile.max_attempts) == (
            gpu.max_new_tokens,
            gpu.critic,
            3,
        )
        assert profile.judge == profile.captioner and profile.judge.backend == "openai"
        assert gpu.release_between_roles and not profile.release_between_roles
    assert gpu.judge == gpu.captioner and gpu.captioner.backend == "vllm"
    assert server.rl == gpu.rl and gpu.rl["edit"].critic_device == "cuda:1"
    assert server.planner.thinking is False and k8s.planner.thinking is None
    for task, prompts_per_step in (("edit", 8), ("gen", 48)):
        mine, reference = k8s.rl[task], gpu.rl[task]
        assert (mine.model, mine.critic_device) == (reference.model, "")
        assert mine.nft == {**reference.nft, "device": "cuda"} and reference.nft["device"] == "cuda:0"
        assert mine.nft["prompts_per_step"] == prompts_per_step
    for name in ("cpu-tiny", "gpu-small"):
        small = get_profile(name)
        assert small.judge == small.captioner and small.rl["edit"].nft == small.rl["gen"].nft


def test_the_judge_alone_moves_by_its_own_block() -> None:
    packaged = get_profile("cpu-tiny")
    resource = ModelsResource(
        judge={"backend": "openai", "model": "remote-judge", "base_url": "http://judge/v1", "concurrency": 3},
        generator={"steps": 5},
    )
    settings = resource.settings()
    judge = settings.judge
    assert (judge.backend, judge.model, judge.base_url, judge.concurrency) == (
        "openai",
        "remote-judge",
        "http://judge/v1",
        3,
    )
    assert judge.max_retries == packaged.judge.max_retries  # unset fields keep the profile's
    assert settings.captioner == packaged.captioner and settings.planner == packaged.planner
    assert [g.steps for g in settings.generators] == [5] and settings.editors == packaged.editors
    # a role's own block is laid over the all-roles fields
    both = ModelsResource(
        chat_backend="openai", base_url="http://all/v1", planner={"base_url": "http://p/v1"}
    )
    assert both.settings().captioner.base_url == "http://all/v1"
    assert both.settings().planner.base_url == "http://p/v1"


def test_a_run_sends_the_judge_alone_to_a_server_under_a_user_profile(
    firm_home: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    handler = ModelHandler(TransformersBackend(str(tiny_models[VL_NAME])), tmp_path)
    server = LoopbackServer(handler, [model_entry("remote-judge", "/weights/judge")])
    profiles = tmp_path / "my-profiles.yaml"
    profiles.write_text(USER_PROFILES)
    config = tmp_path / "run.yaml"
    config.write_text(
        "ops:\n  edit_requests:\n    config:\n      demo_size: 2\n"
        "resources:\n  models:\n    config:\n"
        f"      judge: {{backend: openai, model: remote-judge, base_url: '{server.base_url}', server: vllm,"
        " concurrency: 2, max_retries: 1, timeout_s: 60}\n"
    )
    env = {**os.environ, "FIRM_HOME": str(firm_home), "DAGSTER_HOME": str(firm_home / "dagster")}
    try:
        command = ["run", "edit_curation", "-c", str(config), "--profiles", str(profiles)]
        done = subprocess.run(
            [sys.executable, "-m", "firm_assets.cli", *command],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        server.close()
    assert done.returncode == 0, done.stdout + done.stderr
    with duckdb.connect(str(firm_home / "warehouse.duckdb"), read_only=True) as con:
        models = dict(
            con.execute("SELECT stage, any_value(model_id) FROM inference_cache GROUP BY stage").fetchall()
        )
        judged = con.execute(
            "SELECT count(*) FROM inference_cache WHERE model_id = 'remote-judge'"
        ).fetchone()[0]
        renders = con.execute(
            "SELECT count(*) FROM inference_cache WHERE stage = 'edit_candidates'"
        ).fetchone()[0]
    for stage in ("execution_scores", "consistency_scores", "canary:execution_scores"):
        assert models[stage] == "remote-judge"
    assert models["difference_captions"] == "tiny:tiny-qwen3-vl"  # the captioner stayed in process
    assert server.calls == judged > 0  # every judge call, and nothing else, went to the server
    assert renders == 2  # the user's profile: one seed per request (the packaged profile has two)
