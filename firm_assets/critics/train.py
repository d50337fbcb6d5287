"""Supervised fine-tuning of a critic on one dataset version's ShareGPT exports.

Runs as its own process, launched by the critic assets through Dagster Pipes (parameters arrive in
a JSON file every rank can read; logs and final metrics go back over Pipes from rank 0). It uses
`accelerate`, so the same file trains on one CPU, one GPU, or many under `accelerate launch` (the
shipped configs in `accelerate/`: FSDP full fine-tuning on 8 GPUs, LoRA on one) or `torchrun`.
Read it top to bottom: data -> model -> optimiser and schedule -> resume -> loop -> save -> report.

Records are read and encoded a batch at a time in DataLoader workers (`data.py`), so memory does
not grow with the dataset. A validation split (by record hash) is scored every `eval_every` updates
and at the end. Every `checkpoint_every` updates the full training state (weights, optimizer,
scheduler, RNG, data position, loss history) is written atomically to `checkpoint_dir`; a relaunch
with the same parameters resumes from the newest complete checkpoint with the same data order and
produces the same losses as an uninterrupted run. The checkpoints are deleted once the final
weights are saved.

By hand: python -m firm_assets.critics.train --params params.json
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import AutoModelForImageTextToText, AutoProcessor, get_cosine_schedule_with_warmup

from firm_assets.critics.data import (
    EpochSampler,
    SftDataset,
    encode_batch,
    index_tasks,
    row_loss_sums,
    split_validation,
)
from firm_assets.curation.costs import training_figures
from firm_assets.run_progress import ProgressReporter

STATE_FILE = "trainer_state.json"
SUMMARY_FILE = "training_summary.json"  # saved with the weights: marks them finished
KEEP_CHECKPOINTS = 2
# test hook: the process SIGKILLs itself right after this optimizer update, to prove resume works
KILL_AFTER_UPDATE = "FIRM_TRAIN_SIGKILL_AFTER_UPDATE"
_CHECKPOINT = re.compile(r"step-(\d+)")


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first (a folder only gets its final name, with the
    state file inside, once everything is written)."""
    found = [p for p in folder.glob("step-*") if _CHECKPOINT.fullmatch(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def save_checkpoint(accelerator: Accelerator, folder: Path, state: dict[str, Any]) -> None:
    """Write the full training state to `folder/step-<update>` through a temporary folder, then keep
    only the newest KEEP_CHECKPOINTS. Every rank takes part (FSDP saves one shard per rank)."""
    final = folder / f"step-{state['update']:08d}"
    tmp = folder / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(folder)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old)
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
            report(done)
        return done
    recipe = params["recipe"]
    bf16 = recipe["bf16"] and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    accelerator = Accelerator(
        gradient_accumulation_steps=recipe["gradient_accumulation_steps"],
        mixed_precision="bf16" if bf16 else "no",
    )
    random.seed(recipe["seed"])
    torch.manual_seed(recipe["seed"])

    # data: an index of byte spans, split by record hash; records are read and encoded a batch at a
    # time in DataLoader workers (with 0 workers, in line)
    processor = AutoProcessor.from_pretrained(params["base_model"])
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
    model = AutoModelForImageTextToText.from_pretrained(params["base_model"], dtype=weights_dtype)
    fsdp_checkpointing = accelerator.distributed_type == DistributedType.FSDP and bool(
        accelerator.state.fsdp_plugin.activation_checkpointing
    )
    checkpointing = "fsdp" if fsdp_checkpointing else "off"
    if recipe["gradient_checkpointing"] and not fsdp_checkpointing:  # FSDP wraps the layers itself
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        checkpointing = "on"
    if recipe["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=recipe["lora_rank"],
            lora_alpha=2 * recipe["lora_rank"],
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )
        model = get_peft_model(model, lora)
    model.train()

    # optimiser and schedule
    micro_batches = math.ceil(len(train_set) / (recipe["per_device_batch_size"] * accelerator.num_processes))
    updates_per_epoch = math.ceil(micro_batches / recipe["gradient_accumulation_steps"])
    total_updates = max(1, updates_per_epoch * recipe["epochs"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], weight_decay=0.0)
    steps = total_updates * accelerator.num_processes  # a prepared scheduler steps once per process
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(recipe["warmup_ratio"] * steps), steps)
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
    resumed_at = len(losses)
    progress = ProgressReporter(total_updates - resumed_at, "updates", log)  # this process's updates
    started = time.perf_counter()
    tokens = 0  # training tokens this process read (padding excluded), for the cost row
    window: list[torch.Tensor] = []  # this update's micro-batch losses, read once it is done
    for epoch in range(state["epoch"], recipe["epochs"]):
        skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        batches.set_epoch(epoch)  # a skipping loader is new: it must be told the epoch too
        for done, batch in enumerate(batches, start=skip + 1):
            tokens += int(batch["attention_mask"].sum())
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                window.append(loss.detach())
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), recipe["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            losses.append(torch.stack(window).mean().item())  # one device sync per update
            window = []
            update = len(losses)
            progress.advance()
            if update % recipe["log_every"] == 0 or update == total_updates:
                log(f"epoch {epoch} update {update}/{total_updates} loss {losses[-1]:.4f}")
            if len(val_positions) and recipe["eval_every"] and update % recipe["eval_every"] == 0:
                val_losses.append([update, validation_loss(accelerator, model, val_loader)])
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
        unwrapped.save_pretrained(tmp, state_dict=weights)
        processor.save_pretrained(tmp)
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--params", required=True, help="JSON file of parameters (written by the critic asset)"
    )
    args = parser.parse_args()
    params = json.loads(Path(args.params).read_text())
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

    # under torchrun / accelerate launch every rank trains; only rank 0 talks to Dagster
    if os.environ.get("RANK", "0") != "0" or DAGSTER_PIPES_CONTEXT_ENV_VAR not in os.environ:
        train(
            params,
            print,
            lambda summary: print(json.dumps(summary)),
        )
        return
    with open_dagster_pipes() as pipes:
        train(params, pipes.log.info, pipes.report_custom_message)


if __name__ == "__main__":
    main()
