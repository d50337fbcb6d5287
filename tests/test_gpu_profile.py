"""GPU profile readiness, checked on the CPU: models of other roles are released, the planner's
chat template switch reaches every backend and the cache key, profiles read model ids from the
environment, hub ids load at the commit they record, and scripts/gpu_check.sh fails fast without a GPU."""

from __future__ import annotations

import dataclasses
import gc
import os
import resource
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
from loopback import LoopbackServer
from test_openai_backend import FakeVllm

from firm_assets.curation.parsers import CAPTION_TEXT
from firm_assets.curation.prompts import load_template
from firm_assets.curation.stage import ChatStage, StageInput, run_chat_stage
from firm_assets.gen.checklists import PLAN_LIMITS
from resources import models
from resources.chat import ChatRequest, Decoding
from resources.models import ModelsResource, load_chat_backend, vllm_memory_share
from resources.openai_backend import OpenAIBackend
from resources.profiles import ChatModelConfig, expand_env, get_profile
from resources.tiny_models import TEXT_NAME, VL_NAME
from resources.transformers_backend import TransformersBackend
from warehouse.connection import Warehouse

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
NO_THINK = {"enable_thinking": False}
REQUEST = ChatRequest(user=("Plan three editing prompts.",), system="You plan datasets.")


@pytest.fixture
def empty_cache():
    """Every test starts and ends with no backend loaded in this process."""
    models.release_loaded()
    yield
    models.release_loaded()


# --- release between roles ---------------------------------------------------------------------


def test_release_on_loading_another_role_drops_the_first(tiny_models: dict[str, Path], empty_cache) -> None:
    judge = ChatModelConfig(backend="transformers", model=str(tiny_models[VL_NAME]))
    planner = ChatModelConfig(backend="transformers", model=str(tiny_models[TEXT_NAME]))
    first = load_chat_backend(judge, release_others=True)
    assert load_chat_backend(judge, release_others=True) is first  # the loaded one is reused
    gone = weakref.ref(first)
    del first
    second = load_chat_backend(planner, release_others=True)
    gc.collect()
    assert gone() is None
    assert list(models._LOADED) == [("chat", planner)]
    assert second.generate([REQUEST], Decoding(max_new_tokens=2))  # the new one works


def test_without_release_every_role_stays_loaded(tiny_models: dict[str, Path], empty_cache) -> None:
    judge = ChatModelConfig(backend="transformers", model=str(tiny_models[VL_NAME]))
    planner = ChatModelConfig(backend="transformers", model=str(tiny_models[TEXT_NAME]))
    first = load_chat_backend(judge)
    load_chat_backend(planner)
    assert load_chat_backend(judge) is first
    assert set(models._LOADED) == {("chat", judge), ("chat", planner)}


def test_the_profile_switch_releases_across_chat_and_image_models(
    firm_home: Path, monkeypatch: pytest.MonkeyPatch, empty_cache
) -> None:
    """Through the resource: on a releasing profile the captioner/judge (one shared config), the
    editor and the planner take turns; on cpu-tiny they all stay."""
    tiny = get_profile("cpu-tiny")
    resource = ModelsResource()
    captioner = resource.chat("captioner")
    assert resource.chat("judge") is captioner  # same config: one backend for both roles
    resource.image_backend(tiny.editors[0])
    resource.chat("planner")
    assert len(models._LOADED) == 3

    models.release_loaded()
    releasing = dataclasses.replace(tiny, release_between_roles=True)
    monkeypatch.setattr(models, "get_profile", lambda name: releasing)
    gone = weakref.ref(resource.chat("judge"))
    editor = resource.image_backend(tiny.editors[0])
    gc.collect()
    assert gone() is None and [key[0] for key in models._LOADED] == ["image"]
    assert resource.image_backend(tiny.editors[0]) is editor  # the loaded one is reused
    resource.chat("planner")
    assert not hasattr(editor, "pipeline")  # closed: its weights dropped even while referenced here
    assert [key[0] for key in models._LOADED] == ["chat"]


def test_release_profiles() -> None:
    assert get_profile("gpu").release_between_roles and get_profile("gpu-small").release_between_roles
    assert not get_profile("cpu-tiny").release_between_roles
    assert not get_profile("vllm-server").release_between_roles  # the models live in the servers


def test_vllm_memory_share() -> None:
    role = ChatModelConfig(backend="vllm", model="org/m")
    assert vllm_memory_share(role, alone=True) == 0.85
    assert vllm_memory_share(dataclasses.replace(role, gpu_memory_utilization=0.3), alone=False) == 0.3
    assert vllm_memory_share(dataclasses.replace(role, gpu_memory_utilization=0.3), alone=True) == 0.3
    with pytest.raises(ValueError, match=r"shares the GPU.*gpu_memory_utilization"):
        vllm_memory_share(role, alone=False)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        vllm_memory_share(dataclasses.replace(role, gpu_memory_utilization=1.5), alone=True)


# --- thinking off: the chat template switch ----------------------------------------------------


def test_thinking_maps_to_the_template_variable() -> None:
    role = ChatModelConfig(backend="vllm", model="org/m")
    assert role.chat_template_kwargs() == {}
    assert dataclasses.replace(role, thinking=False).chat_template_kwargs() == NO_THINK
    assert dataclasses.replace(role, thinking=True).chat_template_kwargs() == {"enable_thinking": True}
    assert get_profile("gpu").planner.chat_template_kwargs() == NO_THINK
    assert get_profile("vllm-server").planner.chat_template_kwargs() == NO_THINK
    assert get_profile("gpu").judge.chat_template_kwargs() == {}
    assert get_profile("cpu-tiny").planner.chat_template_kwargs() == {}
    settings = ModelsResource(profile="gpu", planner_thinking=True).settings()
    assert settings.planner.chat_template_kwargs() == {"enable_thinking": True}


@pytest.mark.parametrize("name", [TEXT_NAME, VL_NAME])
def test_transformers_prompt_has_the_empty_think_block(tiny_models: dict[str, Path], name: str) -> None:
    """The tiny models' template has Qwen3's switch: False opens the answer with an empty think
    block; True, or no variable, leaves the prompt as it was."""
    path = str(tiny_models[name])
    plain = TransformersBackend(path)._render(REQUEST)
    assert plain.endswith("<|im_start|>assistant\n") and "<think>" not in plain
    off = TransformersBackend(path, chat_template_kwargs=NO_THINK)
    assert off._render(REQUEST) == plain + "<think>\n\n</think>\n\n"
    assert off._render(REQUEST, "Score: ").endswith("<|im_start|>assistant\nScore: ")  # a prefix continues
    assert TransformersBackend(path, chat_template_kwargs={"enable_thinking": True})._render(REQUEST) == plain
    assert len(off.generate([REQUEST], Decoding(max_new_tokens=3))) == 1


def test_the_template_variables_are_in_the_cache_key(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The same planner stage with thinking off misses the cache entries made without the variable,
    and hits its own."""
    stage = ChatStage("plans", load_template("checklist_plan"), CAPTION_TEXT, Decoding(max_new_tokens=4))
    inputs = [StageInput("s0", {"prompt": "a red car", **PLAN_LIMITS}, {})]
    warehouse = Warehouse(tmp_path / "w.duckdb")
    path = str(tiny_models[TEXT_NAME])
    plain, off = TransformersBackend(path), TransformersBackend(path, chat_template_kwargs=NO_THINK)
    _, first = run_chat_stage(stage, plain, inputs, warehouse, batch_size=4, run_id="a")
    _, second = run_chat_stage(stage, off, inputs, warehouse, batch_size=4, run_id="b")
    _, third = run_chat_stage(stage, off, inputs, warehouse, batch_size=4, run_id="c")
    _, fourth = run_chat_stage(stage, plain, inputs, warehouse, batch_size=4, run_id="d")
    assert [(s.model_calls, s.cache_hits) for s in (first, second, third, fourth)] == [
        (1, 0),
        (1, 0),
        (0, 1),
        (0, 1),
    ]


def test_vllm_gets_the_template_variables_and_shuts_down(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the stand-in engine (what the backend hands vLLM, not vLLM itself): the variables reach
    every `chat` call, the role's memory share and the pinned revision reach `LLM`, and `close`
    shuts the engine core down."""
    from resources.vllm_backend import VllmBackend

    tokenizer = TransformersBackend(str(tiny_models[TEXT_NAME])).tokenizer
    fake = FakeVllm(tokenizer)
    shutdowns: list[str] = []

    class Engine(fake.module.LLM):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            core = type("Core", (), {"shutdown": lambda _self: shutdowns.append("core")})()
            self.llm_engine = type("LLMEngine", (), {"engine_core": core})()

    monkeypatch.setitem(
        sys.modules, "vllm", type(fake.module)(LLM=Engine, SamplingParams=fake.module.SamplingParams)
    )
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", fake.sampling_params)
    backend = VllmBackend(
        str(tiny_models[TEXT_NAME]), gpu_memory_utilization=0.3, chat_template_kwargs=NO_THINK
    )
    assert fake.init_kwargs["gpu_memory_utilization"] == 0.3
    assert fake.init_kwargs["revision"] is None  # a local folder loads itself
    assert backend.chat_template_kwargs == NO_THINK
    backend.generate([REQUEST], Decoding(max_new_tokens=4))
    backend.generate_probed([REQUEST], Decoding(max_new_tokens=4), ["1"])
    backend.next_token_probs([REQUEST, REQUEST], ["Score: ", ""], ["1"])
    assert len(fake.chats) == 4
    assert all(chat["chat_template_kwargs"] == NO_THINK for chat in fake.chats)
    backend.close()
    assert shutdowns == ["core"] and not hasattr(backend, "llm")


def _completion(body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A one-token answer with its log-probability, whatever was asked."""
    message = {"role": "assistant", "content": "ok"}
    top = {"token": "1", "logprob": -0.5, "bytes": None}
    logprobs = {"content": [{**top, "top_logprobs": [top]}]}
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": "stop"}
    return 200, {}, {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}


def test_a_vllm_server_gets_the_template_variables_in_the_request_body() -> None:
    bodies: list[dict[str, Any]] = []
    server = LoopbackServer(lambda body: bodies.append(body) or _completion(body))
    try:
        with OpenAIBackend(server.base_url, "m", revision="r1", chat_template_kwargs=NO_THINK) as backend:
            assert backend.generate([REQUEST], Decoding(max_new_tokens=4, regex="ok")) == ["ok"]
            backend.next_token_probs([REQUEST], ["Score: "], ["1"])
        with OpenAIBackend(server.base_url, "m", revision="r1") as plain:
            plain.generate([REQUEST], Decoding(max_new_tokens=4))
    finally:
        server.close()
    guided, prefixed, unset = bodies
    assert guided["chat_template_kwargs"] == NO_THINK and guided["structured_outputs"] == {"regex": "ok"}
    assert prefixed["chat_template_kwargs"] == NO_THINK and prefixed["continue_final_message"] is True
    assert "chat_template_kwargs" not in unset
    with pytest.raises(ValueError, match="need a vLLM server"):
        OpenAIBackend(server.base_url, "m", revision="r1", server="openai", chat_template_kwargs=NO_THINK)


# --- profiles from the environment, pinned hub ids ---------------------------------------------


def test_expand_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRM_T_SET", "org/set")
    monkeypatch.setenv("FIRM_T_EMPTY", "")
    monkeypatch.delenv("FIRM_T_UNSET", raising=False)
    data = {
        "a": "${FIRM_T_SET:-org/default}",
        "b": ["${FIRM_T_UNSET:-org/default}", "x-${FIRM_T_SET}-y"],
        "c": {"d": "${FIRM_T_EMPTY:-fallback}", "n": 3, "f": False},
    }
    assert expand_env(data) == {
        "a": "org/set",
        "b": ["org/default", "x-org/set-y"],
        "c": {"d": "fallback", "n": 3, "f": False},
    }
    with pytest.raises(ValueError, match="FIRM_T_UNSET"):
        expand_env("${FIRM_T_UNSET}")


def test_gpu_small_reads_its_models_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FIRM_GPU_VL_MODEL", "FIRM_GPU_LLM_MODEL", "FIRM_GPU_EDITOR", "FIRM_GPU_GENERATOR"):
        monkeypatch.delenv(name, raising=False)
    defaults = get_profile("gpu-small")
    assert (defaults.captioner.model, defaults.planner.model) == (
        "Qwen/Qwen3-VL-2B-Instruct",
        "Qwen/Qwen3-0.6B",
    )
    monkeypatch.setenv("FIRM_GPU_VL_MODEL", "/models/vl")
    monkeypatch.setenv("FIRM_GPU_EDITOR", "/models/editor")
    profile = get_profile("gpu-small")
    assert profile.captioner.model == profile.judge.model == profile.critic.base == "/models/vl"
    assert profile.editors == (dataclasses.replace(defaults.editors[0], model="/models/editor"),)
    assert profile.planner == defaults.planner
    assert profile.planner.chat_template_kwargs() == NO_THINK


def test_a_hub_id_loads_at_the_commit_it_records(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """A real Hugging Face cache layout holding the tiny text model under a hub id, offline: the
    backend records the cached commit and transformers loads that snapshot (a fresh process, so the
    cache location is read from the environment as users set it)."""
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in tiny_models[TEXT_NAME].iterdir():
        (snapshot / file.name).symlink_to(file)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text(COMMIT)
    code = (
        "from resources.transformers_backend import TransformersBackend; "
        "backend = TransformersBackend('org/tiny'); print(backend.model.revision)"
    )
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    env["FIRM_HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == COMMIT


# --- scripts/gpu_check.sh ----------------------------------------------------------------------


def test_gpu_check_fails_fast_and_clearly_without_a_gpu(tmp_path: Path) -> None:
    """On this machine (no NVIDIA GPU) the check stops at its first probe, says why, and exits 1."""
    report = ROOT / "docs" / "gpu.md"
    before = report.read_text()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FIRM_HOME": str(tmp_path / "home")},
    )
    # fast: the check's CPU seconds (a loaded machine stretches its wall time, bounded by `timeout`)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime < 30
    assert done.returncode == 1
    assert "gpu_check: FAILED: no NVIDIA GPU" in done.stderr
    assert report.read_text() == before  # nothing recorded
    assert not (tmp_path / "home").exists()  # and no run started


def test_vllm_bench_exits_clearly_without_a_gpu() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "vllm_backend.py"), "--requests", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    assert "cannot run: no CUDA GPU" in done.stderr


def test_a_run_on_cpu_tiny_uses_one_torch_thread() -> None:
    """`cpu_threads: 1` (the tiny models gain nothing from a second thread and lose much on a busy
    machine) is applied as a run sets up the models resource; the gpu profile leaves torch's default."""
    import torch
    from dagster import build_init_resource_context

    assert get_profile("cpu-tiny").cpu_threads == 1 and get_profile("gpu").cpu_threads is None
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ModelsResource(profile="gpu").setup_for_execution(build_init_resource_context())
        assert torch.get_num_threads() == 2
        ModelsResource().setup_for_execution(build_init_resource_context())
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
