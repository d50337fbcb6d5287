"""Supervised fine-tuning of a critic on one dataset version's ShareGPT exports.

Runs as its own process, launched by the critic assets through Dagster Pipes (parameters arrive in
a JSON file every rank can read; logs and final metrics go back over Pipes from rank 0). It uses
`accelerate`, so the same file trains on one CPU, one GPU, or many under `accelerate launch` or
`torchrun`. Read it top to bottom: data -> model -> optimiser and schedule -> loop -> save -> report.

By hand: python -m firm_assets.critics.train --params params.json
"""

import argparse
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, get_cosine_schedule_with_warmup

from firm_assets.curation.sharegpt import read_task
from resources.chat import ChatRequest, ImagePart
from resources.messages import chat_messages

IGNORE = -100


def load_examples(dataset_folder: Path, tasks: list[str]) -> list[dict[str, Any]]:
    """The chosen tasks' ShareGPT records, read and checked as the LLaMA-Factory contract tests read
    them, as (request, target, images) examples."""
    examples = []
    for task in tasks:
        for record in read_task(dataset_folder, task):
            parts = tuple(ImagePart(p, "") if isinstance(p, Path) else p for p in record.user)
            request = ChatRequest(user=parts, system=record.system)
            examples.append(
                {"request": request, "target": record.answer, "images": [p.path for p in request.images]}
            )
    return examples


def encode(processor, example: dict[str, Any]) -> dict[str, Any]:
    """Token ids of prompt + answer; labels mask the prompt so only the answer is learned."""
    messages = chat_messages(example["request"], None, lambda _part: {"type": "image"})
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = processor.apply_chat_template(
        [*messages, {"role": "assistant", "content": example["target"]}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently with an answer appended")
    images = [Image.open(path).convert("RGB") for path in example["images"]]
    full_ids = processor(text=[full], images=images or None, add_special_tokens=False, return_tensors="pt")
    prompt_len = processor(
        text=[prompt], images=images or None, add_special_tokens=False, return_tensors="pt"
    )["input_ids"].shape[1]
    labels = full_ids["input_ids"].clone()
    labels[:, :prompt_len] = IGNORE
    return {**{k: v for k, v in full_ids.items()}, "labels": labels}


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the per-token tensors (ids, labels, masks, multimodal token types); concatenate the
    rest (Qwen-VL packs vision patches and grids per image, not per row)."""
    width = max(item["input_ids"].shape[1] for item in batch)
    pad_values = {"input_ids": pad_id, "labels": IGNORE}
    out = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if values[0].dim() == 2 and values[0].shape[1] == batch[0]["input_ids"].shape[1]:
            value = pad_values.get(key, 0)
            out[key] = torch.cat(
                [torch.nn.functional.pad(v, (0, width - v.shape[1]), value=value) for v in values]
            )
        else:
            out[key] = torch.cat(values)
    return out


def train(params: dict[str, Any], log, report) -> dict[str, Any]:
    recipe = params["recipe"]
    accelerator = Accelerator(
        gradient_accumulation_steps=recipe["gradient_accumulation_steps"],
        mixed_precision="bf16" if torch.cuda.is_available() and recipe.get("bf16", True) else "no",
    )
    random.seed(recipe["seed"])
    torch.manual_seed(recipe["seed"])

    # data
    processor = AutoProcessor.from_pretrained(params["base_model"])
    examples = load_examples(Path(params["dataset_folder"]), params["tasks"])
    encoded = [encode(processor, example) for example in examples]
    pad_id = processor.tokenizer.pad_token_id
    loader = torch.utils.data.DataLoader(
        encoded,
        batch_size=recipe["per_device_batch_size"],
        shuffle=True,
        collate_fn=lambda batch: collate(batch, pad_id),
        generator=torch.Generator().manual_seed(recipe["seed"]),
    )

    # model
    model = AutoModelForImageTextToText.from_pretrained(params["base_model"], dtype=torch.float32)
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
    updates_per_epoch = math.ceil(len(loader) / recipe["gradient_accumulation_steps"])
    total_updates = max(1, updates_per_epoch * recipe["epochs"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(recipe["warmup_ratio"] * total_updates), total_updates
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    # loop
    losses: list[float] = []
    started = time.perf_counter()
    window: list[float] = []
    for epoch in range(recipe["epochs"]):
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                window.append(loss.item())
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), recipe["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                losses.append(sum(window) / len(window))
                window = []
                if len(losses) % recipe["log_every"] == 0 or len(losses) == total_updates:
                    log(f"epoch {epoch} update {len(losses)}/{total_updates} loss {losses[-1]:.4f}")

    # save: merged full weights, loadable with from_pretrained like the base
    accelerator.wait_for_everyone()
    output = Path(params["output_dir"])
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if recipe["method"] == "lora":
            unwrapped = unwrapped.merge_and_unload()
        tmp = output.with_name(output.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        shutil.rmtree(output, ignore_errors=True)
        os.replace(tmp, output)
    summary = {
        "examples": len(examples),
        "updates": len(losses),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "losses": losses,
        "train_seconds": round(time.perf_counter() - started, 2),
    }
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
            lambda summary: print(json.dumps({k: v for k, v in summary.items() if k != "losses"})),
        )
        return
    with open_dagster_pipes() as pipes:
        train(params, pipes.log.info, pipes.report_custom_message)


if __name__ == "__main__":
    main()
