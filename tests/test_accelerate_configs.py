"""The shipped accelerate configs, read by accelerate's own config classes and launch code, and the
run config that selects one."""

import sys
from pathlib import Path

import pytest
import torch
import transformers.models.qwen3_vl.modeling_qwen3_vl as qwen3_vl
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env
from critic_runs import run_summary, train_critic
from torch.distributed.fsdp import CPUOffloadPolicy, StateDictType
from transformers import AutoModelForImageTextToText

from firm_assets.critics.recipe import ACCELERATE_CONFIGS, ACCELERATE_DIR, CriticTrainingConfig, launch_prefix

FSDP = ACCELERATE_DIR / "fsdp_8gpu_full.yaml"
FSDP2_CPU = ACCELERATE_DIR / "fsdp2_cpu_2proc.yaml"
LORA = ACCELERATE_DIR / "lora_1gpu.yaml"
WRAPPED = ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"]


def test_every_selectable_config_is_shipped() -> None:
    assert sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml")) == sorted(ACCELERATE_CONFIGS)


def _launched(config_file: Path, monkeypatch: pytest.MonkeyPatch):
    """What `accelerate launch --config_file` makes of a config: its parsed arguments, and the FSDP
    plugin each rank builds from the environment the launch sets."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(config_file), "-m", "firm_assets.critics.train"]
    )
    args, _, _ = _validate_launch_command(args)
    for name, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(name, value)
    return args, FullyShardedDataParallelPlugin()


def test_fsdp_config_shards_a_full_fine_tune_over_8_gpus_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config_from_file(str(FSDP))
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_processes, config.num_machines) == (
        DistributedType.FSDP,
        8,
        1,
    )
    assert config.mixed_precision == "bf16"

    args, plugin = _launched(FSDP, monkeypatch)
    assert args.use_fsdp and args.num_processes == 8 and args.mixed_precision == "bf16"
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # full shard
    assert plugin.transformer_cls_names_to_wrap == WRAPPED
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.activation_checkpointing is True
    assert not isinstance(plugin.cpu_offload, CPUOffloadPolicy)  # the shards stay on the GPUs
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
    assert plugin.cpu_ram_efficient_loading is True  # rank 0 reads the 8B weights, the others get shards


def test_fsdp2_cpu_config_shards_over_2_processes_as_the_8_gpu_config_does(monkeypatch) -> None:
    """The laptop's FSDP2 config differs from the 8-GPU one in its process count and precision only
    (its fp32 run on a CPU is `tests/test_critic_multiprocess.py`'s)."""
    args, plugin = _launched(FSDP2_CPU, monkeypatch)
    assert args.use_fsdp and args.num_processes == 2 and args.mixed_precision == "no"
    _, eight_gpus = _launched(FSDP, monkeypatch)
    shared = (
        "fsdp_version",
        "reshard_after_forward",
        "transformer_cls_names_to_wrap",
        "activation_checkpointing",
        "state_dict_type",
        "cpu_ram_efficient_loading",
    )
    assert {name: getattr(plugin, name) for name in shared} == {
        name: getattr(eight_gpus, name) for name in shared
    }
    assert not isinstance(plugin.cpu_offload, CPUOffloadPolicy)  # the shards are on the CPU already


def test_the_wrapped_layer_classes_are_qwen3_vl_s(tiny_models: dict[str, Path]) -> None:
    assert all(isinstance(getattr(qwen3_vl, name), type) for name in WRAPPED)
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["tiny-qwen3-vl"])
    assert {type(m).__name__ for m in model.modules()} >= set(WRAPPED)


def test_lora_config_is_one_gpu_without_sharding() -> None:
    config = load_config_from_file(str(LORA))
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_processes, config.mixed_precision) == (
        DistributedType.NO,
        1,
        "bf16",
    )
    assert config.fsdp_config == {} and config.gpu_ids == "0"


def test_launch_prefix_follows_the_run_config() -> None:
    assert launch_prefix(CriticTrainingConfig(), "full") == [sys.executable, "-m"]
    assert launch_prefix(CriticTrainingConfig(launcher=["torchrun", "-m"]), "full") == ["torchrun", "-m"]
    assert launch_prefix(CriticTrainingConfig(accelerate_config="fsdp_8gpu_full"), "full") == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(FSDP),
        "-m",
    ]
    with pytest.raises(ValueError, match="must be one of"):
        launch_prefix(CriticTrainingConfig(accelerate_config="deepspeed"), "full")
    with pytest.raises(ValueError, match="for method 'lora', not 'full'"):
        launch_prefix(CriticTrainingConfig(accelerate_config="lora_1gpu"), "full")
    with pytest.raises(ValueError, match="either launcher or accelerate_config"):
        launch_prefix(CriticTrainingConfig(accelerate_config="lora_1gpu", launcher=["x"]), "lora")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of a bf16 config")
def test_lora_1gpu_launches_through_accelerate_and_falls_back_to_fp32_without_a_gpu(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    from test_train import _dataset, _params

    params = _params(
        tmp_path, tiny_models["tiny-qwen3-vl"], _dataset(tmp_path / "exports"), method="lora", epochs=1
    )
    command = launch_prefix(CriticTrainingConfig(accelerate_config="lora_1gpu"), "lora")
    summary = run_summary(train_critic(params, launcher=command))
    assert summary["updates"] == 2
    assert summary["ran"]["mixed_precision"] == "no" and summary["ran"]["weights_dtype"] == "float32"
