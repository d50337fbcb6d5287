"""Supervised fine-tuning of a critic on one dataset version's ShareGPT exports.

Runs as its own process, launched by the critic assets through Dagster Pipes (parameters arrive in
a JSON file every rank can read; logs and final metrics go back over Pipes from rank 0). It uses
`accelerate`, so the same file trains on one CPU, one GPU, or many under `accelerate launch` (the
shipped configs in `accelerate/`: FSDP2 full fine-tuning on 8 GPUs, LoRA on one, DDP or FSDP2 over
2 processes, on a CPU over gloo where there is no CUDA) or `torchrun`.
Read it top to bottom: data -> model -> optimiser and schedule -> resume -> loop -> save -> report.

The recipe is LLaMA-Factory's, which FIRM trained with (github.com/hiyouga/LLaMA-Factory): the
vision tower and projector frozen (src/llamafactory/model/adapter.py `_setup_full_tuning`, keys from
model/model_utils/visual.py), no KV cache in a training forward (model_utils/kv_cache.py), images
held to the recipe's pixel budget, and the loss normalised over the target tokens of the whole
accumulated batch on every rank, as transformers' Trainer does for LLaMA-Factory
(`Trainer._get_num_items_in_batch` with `average_tokens_across_devices`): a long answer weighs by
its tokens, not by the micro-batch it happened to fall in. Accumulation is therefore done here (the
micro-batches of an update are read first, to count their tokens) rather than by
`Accelerator.accumulate`.

Records are read and encoded a batch at a time in DataLoader workers (`data.py`), so memory does
not grow with the dataset. A validation split (by record hash) is scored every `eval_every` updates
and at the end. Every `checkpoint_every` updates the full training state (weights, optimizer,
scheduler, RNG, data position, loss history) is written atomically to `checkpoint_dir`; a relaunch
with the same parameters resumes from the newest complete checkpoint with the same data order and
produces the same losses as an uninterrupted run. The checkpoints are deleted once the final
weights are saved.

Losses reach MLflow as they happen (rank 0 logs each update to the run named in the parameters), so
a killed run shows its curve; a resumed process logs the history it restored first.

By hand: python -m firm_assets.critics.train --params params.json
"""

import json
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from transformers import AutoModelForImageTextToText, AutoProcessor, get_cosine_schedule_with_warmup

from firm_assets.checkpoints import TMP_PREFIX, complete_checkpoints, prune, step_dir
from firm_assets.critics.data import (
    EpochSampler,
    SftDataset,
    encode_batch,
    index_tasks,
    row_loss_sums,
    set_pixel_budget,
    split_validation,
    target_tokens,
)
from firm_assets.curation.costs import training_figures
from firm_assets.run_progress import ProgressReporter
from firm_assets.trainer_entry import read_params, reports_to_dagster, through_pipes

STATE_FILE = "trainer_state.json"
SUMMARY_FILE = "training_summary.json"  # saved with the weights: marks them finished
KEEP_CHECKPOINTS = 2
# test hook: the process SIGKILLs itself right after this optimizer update, to prove resume works
KILL_AFTER_UPDATE = "FIRM_TRAIN_SIGKILL_AFTER_UPDATE"
# LLaMA-Factory's parameter-name keys of the vision tower and the projector, by model type
# (src/llamafactory/model/model_utils/visual.py, `_register_composite_model`)
_QWEN3_VL_VISION = ("visual.pos_embed", "visual.patch_embed", "visual.blocks", "visual.deepstack_merger_list")
VISION_TOWER = {"qwen3_vl": _QWEN3_VL_VISION, "qwen3_vl_moe": _QWEN3_VL_VISION}
PROJECTOR = {"qwen3_vl": ("visual.merger",), "qwen3_vl_moe": ("visual.merger",)}


def freeze_vision(model, recipe: dict[str, Any]) -> None:
    """Stop the gradients of the vision tower and/or the projector, as the recipe says. A model type
    whose parts are not known here cannot be frozen: that is an error, not a silently trained tower."""
    model_type = model.config.model_type
    keys: list[str] = []
    for setting, parts in (
        ("freeze_vision_tower", VISION_TOWER),
        ("freeze_multi_modal_projector", PROJECTOR),
    ):
        if not recipe[setting]:
            continue
        if model_type not in parts:
            raise ValueError(f"{setting}: the parts of a {model_type!r} model are not known; set it false")
        keys += parts[model_type]
    for name, parameter in model.named_parameters():
        if any(key in name for key in keys):
            parameter.requires_grad_(False)


def _configs(model) -> list:
    configs = (model.config, getattr(model.config, "text_config", None))
    return [config for config in configs if config is not None]


def no_cache(model) -> None:
    """No KV cache in a training forward (it is never read, and at the paper's batch it costs GB per
    GPU): off on the model's config and on its text config, where Qwen3-VL reads it."""
    for config in _configs(model):
        config.use_cache = False


def cache_for_inference(model) -> None:
    """The saved critic generates: its configs say so again."""
    for config in _configs(model):
        config.use_cache = True


def fsdp_on_cpu(accelerator: Accelerator) -> None:
    """Run accelerate's FSDP2 path on a group of CPU processes (gloo), as an FSDP2 config asks.

    accelerate (1.16) selects FSDP only in the accelerator branch of `AcceleratorState.__init__`
    (state.py: CUDA, XPU, ...); on a CPU group it leaves a MULTI_CPU state, and an FSDP config would
    train as plain DDP without a word. Its FSDP2 code (`fsdp2_prepare_model`, sharded
    `save_state`/`load_state` through torch.distributed.checkpoint, `get_state_dict`) is not tied to
    a device, and torch's `fully_shard` runs on a CPU mesh over gloo. So on a MULTI_CPU group this
    does what that branch does: the shared state says FSDP and holds the plugin read from the
    launch environment. One path on GPU and CPU, all of it accelerate's. Still refused (an error,
    not a silent DDP run): a single process, which shards nothing, and FSDP1, which no shipped config
    uses and which has not run on a CPU here."""
    if accelerator.distributed_type == DistributedType.FSDP:  # an accelerator device: accelerate's own
        return
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables `accelerate launch` set
    if accelerator.distributed_type != DistributedType.MULTI_CPU or plugin.fsdp_version != 2:
        raise RuntimeError(
            f"the accelerate config asks for FSDP{plugin.fsdp_version}, but accelerate runs"
            f" {accelerator.distributed_type.value} here (without an accelerator device FSDP runs as"
            " FSDP2 over 2 or more processes: use fsdp2_cpu_2proc or ddp_cpu_2proc on a CPU)"
        )
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState does


def training_model(base_model: str, recipe: dict[str, Any], weights_dtype: torch.dtype):
    """The base as the trainer trains it: no KV cache, the recipe's parts frozen (full fine-tuning;
    LoRA's adapters sit on the language model's attention only), in training mode."""
    model = AutoModelForImageTextToText.from_pretrained(base_model, dtype=weights_dtype)
    no_cache(model)
    if recipe["method"] == "full":
        freeze_vision(model, recipe)
    model.train()
    return model


def accumulation_windows(batches: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """The micro-batches of each optimizer update, `size` at a time (the epoch's last may be fewer)."""
    window: list[dict] = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def window_loss(logits: torch.Tensor, labels: torch.Tensor, window_targets: torch.Tensor) -> torch.Tensor:
    """One micro-batch's share of its update's loss: its summed next-token cross-entropy over the
    answer tokens, divided by the answer tokens of the whole accumulated batch on every rank. Summed
    over the update's micro-batches and ranks, that is the mean over every target token."""
    sums, _ = row_loss_sums(logits, labels)
    return sums.sum() / window_targets.clamp(min=1)


class LossLog:
    """Loss points to the MLflow run named in the parameters, each as it is made, from rank 0 only
    (no run named: nothing is logged)."""

    def __init__(self, params: dict[str, Any], main_process: bool) -> None:
        target = params.get("mlflow") if main_process else None
        self.run_id = target["run_id"] if target else None
        if self.run_id:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=target["tracking_uri"])

    def log(self, name: str, points: Iterable[tuple[int, float]]) -> None:
        """Writes one metric's history to the run in one batch; no-op without a tracking run."""
        from mlflow.entities import Metric

        if not self.run_id:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for step, value in points]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def history(self, losses: list[float], val_losses: list[list]) -> None:
        """Records the training and validation loss curves."""
        self.log("train_loss", enumerate(losses, start=1))
        self.log("val_loss", [(step, value) for step, value in val_losses])


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first (a folder only gets its final name, with the
    state file inside, once everything is written)."""
    return [path for _, path in complete_checkpoints(folder, STATE_FILE)]


def save_checkpoint(accelerator: Accelerator, folder: Path, state: dict[str, Any]) -> None:
    """Write the full training state to `folder/step-<update>` through a temporary folder, then keep
    only the newest KEEP_CHECKPOINTS. Every rank takes part (FSDP saves one shard per rank), so the
    temporary folder's name is the same on every rank, unlike `checkpoints.write_atomically`'s."""
    final = step_dir(folder, state["update"])
    tmp = folder / f"{TMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(folder, STATE_FILE, KEEP_CHECKPOINTS)
    accelerator.wait_for_everyone()


def validation_loss(accelerator: Accelerator, model, loader) -> float:
    """Mean next-token loss over every answer token of the validation split (all ranks together)."""
    model.eval()
    total, tokens = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
    with torch.no_grad():
        for batch in loader:
            labels = batch.pop("labels")
            sums, counts = row_loss_sums(model(**batch).logits, labels)
            sums, counts = accelerator.gather_for_metrics((sums, counts))
            total += sums.double().sum().cpu()
            tokens += counts.sum().cpu()
    model.train()
    return (total / tokens).item()


def finished_summary(output: Path) -> dict[str, Any] | None:
    """The summary saved beside finished weights, if this output folder holds any. The folder is only
    ever replaced whole (weights, processor and summary together), so a summary there means the weights
    are complete."""
    path = output / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def train(params: dict[str, Any], log, report) -> dict[str, Any]:
    """Train (or resume) one critic version and save it to `output_dir`. If a previous process already
    saved this version's weights (and then its parent failed, e.g. at registration), report that
    process's summary instead of training again: the output folder is per version, so the weights
    there are exactly what these parameters produce. Every rank stops there (one that went on would
    wait for the others at its first collective forever); rank 0 reports."""
    if (saved := finished_summary(Path(params["output_dir"]))) is not None:
        nothing_spent = training_figures(0.0, False, 1, model_calls=0, tokens_in=0)
        done = {**saved, "cost": nothing_spent}
        if os.environ.get("RANK", "0") == "0":
            log(f"{params['output_dir']} already holds this version's trained weights; not training again")
            if params.get("mlflow"):  # this launch's run gets the finished curve
                LossLog(params, True).history(saved["losses"], saved["val_losses"])
            report(done)
        return done
    recipe = params["recipe"]
    bf16 = recipe["bf16"] and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # accumulation is done by hand (see the module docstring); `cpu` without CUDA, because
    # `accelerate launch` does not tell a CPU-only multi-process run that it is one (no
    # ACCELERATE_USE_CPU in its torchrun environment) and every process would train alone
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available())
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":  # an FSDP config was launched
        fsdp_on_cpu(accelerator)  # on an accelerator device accelerate has turned FSDP on already
    random.seed(recipe["seed"])
    torch.manual_seed(recipe["seed"])

    # data: an index of byte spans, split by record hash; records are read and encoded a batch at a
    # time in DataLoader workers (with 0 workers, in line)
    processor = AutoProcessor.from_pretrained(params["base_model"])
    set_pixel_budget(processor, recipe["image_max_pixels"], recipe["image_min_pixels"])
    index = index_tasks(Path(params["dataset_folder"]), params["tasks"])
    train_positions, val_positions = split_validation(index.keys, recipe["val_fraction"])
    loader_args = {
        "batch_size": recipe["per_device_batch_size"],
        "collate_fn": partial(encode_batch, processor),
        "num_workers": recipe["dataloader_workers"],
        # workers stay up across epochs and validation passes instead of starting anew for each
        "persistent_workers": recipe["dataloader_workers"] > 0,
        "generator": torch.Generator().manual_seed(recipe["seed"]),  # keeps the global RNG untouched
    }
    train_set = SftDataset(index, train_positions)
    loader = torch.utils.data.DataLoader(
        train_set, sampler=EpochSampler(len(train_set), recipe["seed"]), **loader_args
    )
    val_loader = torch.utils.data.DataLoader(SftDataset(index, val_positions), **loader_args)

    # model: fp32 master weights for full fine-tuning (bf16 compute comes from autocast or FSDP's
    # mixed precision: AdamW updates of 1e-5 would vanish in bf16 weights); LoRA keeps the frozen
    # base in bf16 and peft's adapters in fp32
    weights_dtype = torch.bfloat16 if bf16 and recipe["method"] == "lora" else torch.float32
    model = training_model(params["base_model"], recipe, weights_dtype)
    fsdp_checkpointing = accelerator.distributed_type == DistributedType.FSDP and bool(
        accelerator.state.fsdp_plugin.activation_checkpointing
    )
    checkpointing = "fsdp" if fsdp_checkpointing else "off"
    if recipe["gradient_checkpointing"] and not fsdp_checkpointing:  # FSDP wraps the layers itself
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        checkpointing = "on"
    if recipe["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=recipe["lora_rank"],
            lora_alpha=2 * recipe["lora_rank"],
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )
        model = get_peft_model(model, lora)

    # optimiser and schedule
    micro_batches = math.ceil(len(train_set) / (recipe["per_device_batch_size"] * accelerator.num_processes))
    updates_per_epoch = math.ceil(micro_batches / recipe["gradient_accumulation_steps"])
    total_updates = max(1, updates_per_epoch * recipe["epochs"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], weight_decay=0.0)
    # warm-up updates rounded up, as transformers' TrainingArguments.get_warmup_steps does; a prepared
    # scheduler steps once per process, so both counts are scaled by the processes (rounding the
    # scaled count instead would warm a 2-process run up for longer than a 1-process one)
    warmup = math.ceil(recipe["warmup_ratio"] * total_updates) * accelerator.num_processes
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_updates * accelerator.num_processes)
    model, optimizer, loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, loader, val_loader, scheduler
    )

    # resume: the newest complete checkpoint of this version, if a previous process got that far
    state = {"update": 0, "epoch": 0, "batches_in_epoch": 0, "losses": [], "val_losses": []}
    folder = Path(params["checkpoint_dir"]) if params.get("checkpoint_dir") else None
    if folder and recipe["checkpoint_every"]:
        folder.mkdir(parents=True, exist_ok=True)
        if found := checkpoints(folder):
            accelerator.load_state(str(found[-1]))
            state = json.loads((found[-1] / STATE_FILE).read_text())
            if state["train_examples"] != len(train_set):
                raise ValueError(f"{found[-1]} was written for {state['train_examples']} training examples")
            log(f"resuming from {found[-1].name}: epoch {state['epoch']}, update {state['update']}")
    if state["batches_in_epoch"] >= len(loader):
        state.update(epoch=state["epoch"] + 1, batches_in_epoch=0)
    kill_after = int(os.environ.get(KILL_AFTER_UPDATE, "0"))

    # loop
    losses, val_losses = state["losses"], state["val_losses"]
    loss_log = LossLog(params, accelerator.is_main_process)
    loss_log.history(losses, val_losses)  # a resumed run's curve starts where the restored one did
    resumed_at = len(losses)
    progress = ProgressReporter(total_updates - resumed_at, "updates", log)  # this process's updates
    started = time.perf_counter()
    tokens = 0  # training tokens this process read (padding excluded), for the cost row
    for epoch in range(state["epoch"], recipe["epochs"]):
        done = state["batches_in_epoch"] if epoch == state["epoch"] else 0
        batches = accelerator.skip_first_batches(loader, done) if done else loader
        batches.set_epoch(epoch)  # a skipping loader is new: it must be told the epoch too
        for window in accumulation_windows(batches, recipe["gradient_accumulation_steps"]):
            local_targets = sum(target_tokens(batch["labels"]) for batch in window)
            targets = accelerator.reduce(torch.tensor(local_targets, device=accelerator.device), "sum")
            update_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            for position, batch in enumerate(window):
                tokens += int(batch["attention_mask"].sum())
                labels = batch.pop("labels")
                # gradients are averaged over the ranks once, after the update's last micro-batch
                last = position == len(window) - 1
                with nullcontext() if last else accelerator.no_sync(model):
                    loss = window_loss(model(**batch).logits, labels, targets)
                    # DDP and FSDP average the ranks' gradients: undo that, the loss is already global
                    accelerator.backward(loss * accelerator.num_processes)
                update_loss += loss.detach()
            accelerator.clip_grad_norm_(model.parameters(), recipe["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            done += len(window)
            losses.append(accelerator.reduce(update_loss, "sum").item())  # one sync per update
            update = len(losses)
            loss_log.log("train_loss", [(update, losses[-1])])
            progress.advance()
            if update % recipe["log_every"] == 0 or update == total_updates:
                log(f"epoch {epoch} update {update}/{total_updates} loss {losses[-1]:.4f}")
            if len(val_positions) and recipe["eval_every"] and update % recipe["eval_every"] == 0:
                val_losses.append([update, validation_loss(accelerator, model, val_loader)])
                loss_log.log("val_loss", [tuple(val_losses[-1])])
                log(f"update {update} val_loss {val_losses[-1][1]:.4f}")
            if folder and recipe["checkpoint_every"] and update % recipe["checkpoint_every"] == 0:
                state = {
                    "update": update,
                    "epoch": epoch,
                    "batches_in_epoch": done,
                    "train_examples": len(train_set),
                    "losses": losses,
                    "val_losses": val_losses,
                }
                save_checkpoint(accelerator, folder, state)
            if update == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    if len(val_positions) and (not val_losses or val_losses[-1][0] != len(losses)):
        val_losses.append([len(losses), validation_loss(accelerator, model, val_loader)])
        loss_log.log("val_loss", [tuple(val_losses[-1])])
        log(f"update {len(losses)} val_loss {val_losses[-1][1]:.4f}")
    train_seconds = time.perf_counter() - started
    tokens = int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device), reduction="sum"))

    # save: merged full weights, loadable with from_pretrained like the base (FSDP gathers them)
    weights = accelerator.get_state_dict(model)
    output = Path(params["output_dir"])
    summary = {
        "examples": len(index),
        "train_examples": len(train_set),
        "val_examples": len(val_positions),
        "updates": len(losses),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "losses": losses,
        "val_losses": val_losses,
        "final_val_loss": val_losses[-1][1] if val_losses else None,
        "train_seconds": round(train_seconds, 2),
        # this process's share of the materialization's cost: updates made now (not before a resume)
        "cost": training_figures(
            train_seconds,
            accelerator.device.type == "cuda",
            accelerator.num_processes,
            model_calls=len(losses) - resumed_at,
            tokens_in=tokens,
        ),
        "ran": {
            "mixed_precision": accelerator.mixed_precision,
            "weights_dtype": str(weights_dtype).removeprefix("torch."),
            "gradient_checkpointing": checkpointing,
            "distributed_type": str(accelerator.distributed_type.value),
            "num_processes": accelerator.num_processes,
            "dataloader_workers": recipe["dataloader_workers"],
        },
    }
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if recipe["method"] == "lora":
            unwrapped, weights = unwrapped.merge_and_unload(), None
        tmp = output.with_name(output.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        cache_for_inference(unwrapped)
        unwrapped.save_pretrained(tmp, state_dict=weights)
        processor.save_pretrained(tmp)  # with the pixel budget: inference sizes images as training did
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary))
        shutil.rmtree(output, ignore_errors=True)
        os.replace(tmp, output)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        report(summary)
    return summary


def main() -> None:
    """Subprocess entry point: trains a critic from the parameters file the asset wrote."""
    params = read_params(__doc__, "critic asset")
    # under torchrun / accelerate launch every rank trains; only rank 0 talks to Dagster
    if not reports_to_dagster():
        train(params, print, lambda summary: print(json.dumps(summary)))
        return
    through_pipes(partial(train, params))


if __name__ == "__main__":
    main()
