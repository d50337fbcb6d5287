"""The three LoRA adapters of a run on one transformer: trained ("default"), rollout ("old") and
evaluation ("ema"), their blending, and saving/loading them as plain peft adapter folders."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from firm_assets.rl.nft.config import NFTConfig
from firm_assets.rl.nft.pipelines import Family

# LoRA goes on the attention projections of the MMDiT / Flux blocks (image and text streams).
ATTENTION_PROJECTIONS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
ADAPTERS = ("default", "old", "ema")  # trained, rollout (slow average), evaluation (EMA)


def add_adapters(family: Family, config: NFTConfig) -> PeftModel:
    """Trained, old and EMA LoRA adapters on the attention projections; old and EMA start as
    copies of the trained one (which, with B = 0, starts as the base model)."""
    names = {
        name for name, module in family.transformer.named_modules() if isinstance(module, torch.nn.Linear)
    }
    targets = sorted({p for p in ATTENTION_PROJECTIONS if any(n.endswith("." + p) for n in names)})
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = get_peft_model(family.transformer, lora, adapter_name="default")
        for name in ADAPTERS[1:]:
            model.add_adapter(name, lora)
    for name in ADAPTERS[1:]:
        blend_adapter(model, target=name, source="default", decay=0.0)
    model.set_adapter("default")
    return model


def adapter_params(model: PeftModel, adapter: str) -> dict[str, torch.nn.Parameter]:
    """The adapter's LoRA tensors keyed by their name with the adapter name taken out."""
    marker = f".{adapter}."
    return {
        name.replace(marker, "."): param
        for name, param in model.named_parameters()
        if ".lora_" in name and marker in name
    }


@torch.no_grad()
def blend_adapter(model: PeftModel, target: str, source: str, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source."""
    sources = adapter_params(model, source)
    for name, param in adapter_params(model, target).items():
        param.mul_(decay).add_(sources[name], alpha=1 - decay)


def ema_of(model: PeftModel, config: NFTConfig, updates_done: int) -> EMAModel:
    """diffusers' EMAModel over the trained adapter, starting from the "ema" adapter's weights after
    `updates_done` updates. Its decay at update s is min((1 + s) / (10 + s), ema_decay), the
    reference's warm-up (DiffusionNFT `flow_grpo/ema.py`, decay 0.9 in `scripts/train_nft_sd3.py`):
    `update_after_step=-1` makes diffusers count s from 1 at the first update, as the reference does."""
    ema = EMAModel(
        _ordered(model, "ema"), decay=config.ema_decay, min_decay=0.0, update_after_step=-1, foreach=False
    )
    ema.optimization_step = updates_done
    return ema


def update_ema(ema: EMAModel, model: PeftModel) -> None:
    """One EMA update from the trained adapter, written into the "ema" adapter (saved, evaluated)."""
    ema.step(_ordered(model, "default"))
    ema.copy_to(_ordered(model, "ema"))


def _ordered(model: PeftModel, adapter: str) -> list[torch.nn.Parameter]:
    return [param for _, param in sorted(adapter_params(model, adapter).items())]


def save_adapter(model: PeftModel, adapter: str, folder: Path) -> None:
    """A standard peft adapter folder (adapter_config.json + adapter_model.safetensors) that
    `PeftModel.from_pretrained(transformer, folder)` loads."""
    folder.mkdir(parents=True)
    state = get_peft_model_state_dict(model, adapter_name=adapter)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state.items()}, folder / "adapter_model.safetensors"
    )
    model.peft_config[adapter].save_pretrained(str(folder))


def load_adapter(model: PeftModel, adapter: str, folder: Path, device: torch.device) -> None:
    """Loads a saved LoRA adapter into the model, refusing one from another architecture."""
    tensors = load_file(folder / "adapter_model.safetensors", device=str(device))
    result = set_peft_model_state_dict(model, tensors, adapter_name=adapter)
    if result.unexpected_keys:
        raise ValueError(f"{folder} holds tensors this model lacks: {result.unexpected_keys[:3]}")
