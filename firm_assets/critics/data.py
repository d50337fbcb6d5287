"""The critic trainer's data: ShareGPT records read lazily and encoded a batch at a time.

A published task file can hold hundreds of thousands of records, and an encoded Qwen-VL example with
two 1024 px images is tens of MiB of pixel values, so nothing is kept per record but its byte span
in the task file and a key for the validation split (numpy arrays: no Python objects whose
reference counts would copy the pages into every DataLoader worker). Each record is checked against
the LLaMA-Factory contract once, when the index is built, so a broken export fails before training
starts; `__getitem__` reads and parses the record in the DataLoader worker that asks for it, and
that worker encodes the batch's records together (`encode_batch`).
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from firm_assets.curation.json_stream import json_values
from firm_assets.curation.sharegpt import (
    INFO_FILE,
    ExportContractError,
    SftRecord,
    entry_name,
    entry_path,
    parse_record,
)
from resources.chat import ChatRequest, ImagePart, load_rgb
from resources.messages import chat_messages

IGNORE = -100


def record_key(record: dict) -> int:
    """A 64-bit key from the record's content (key order and spacing do not matter), which decides
    the validation split: the same record lands on the same side in every run and every version."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(canonical.encode("utf-8")).digest()[:8], "big")


@dataclass(frozen=True)
class RecordIndex:
    """Where every record of the chosen tasks lies: task file, byte span, split key."""

    root: Path
    files: tuple[Path, ...]
    file_ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def record(self, position: int) -> SftRecord:
        """The record at `position`, read from its file and parsed."""
        with self.files[self.file_ids[position]].open("rb") as file:
            file.seek(int(self.starts[position]))
            raw = file.read(int(self.ends[position] - self.starts[position]))
        return parse_record(json.loads(raw), self.root)


def index_tasks(dataset_folder: Path, tasks: list[str]) -> RecordIndex:
    """Scan the tasks' files (found through the root `dataset_info.json`, as LLaMA-Factory finds
    them), check every record and note where it lies. The first broken record raises
    `ExportContractError` naming its file and 0-based index."""
    root = dataset_folder.parent.parent
    files, file_ids, starts, ends, keys = [], [], [], [], []
    for task in tasks:
        path = entry_path(root / INFO_FILE, entry_name(task, dataset_folder.name))
        for index, (start, end, record) in enumerate(json_values(path)):
            try:
                if not isinstance(record, dict):
                    raise ExportContractError("a record is not an object")
                parse_record(record, root)
            except ExportContractError as error:
                raise ExportContractError(f"{path.relative_to(root)} record {index}: {error}") from None
            file_ids.append(len(files))
            starts.append(start)
            ends.append(end)
            keys.append(record_key(record))
        files.append(path)
    return RecordIndex(
        root,
        tuple(files),
        np.array(file_ids, dtype=np.int32),
        np.array(starts, dtype=np.int64),
        np.array(ends, dtype=np.int64),
        np.array(keys, dtype=np.uint64),
    )


def split_validation(keys: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and the validation records. A record is held out when its key,
    read as a fraction of 2**64, is below `fraction`; with a positive fraction and at least two
    records, at least one is held out and at least one is trained on."""
    order = np.argsort(keys, kind="stable")
    held = int(np.count_nonzero(keys / 2.0**64 < fraction))
    if fraction > 0 and len(keys) >= 2:
        held = min(max(held, 1), len(keys) - 1)
    elif len(keys) < 2:
        held = 0
    return np.sort(order[held:]), np.sort(order[:held])


def example(record: SftRecord) -> dict[str, Any]:
    """A record as the request the critic will see at inference, the answer to learn and its images."""
    parts = tuple(ImagePart(p, "") if isinstance(p, Path) else p for p in record.user)
    request = ChatRequest(user=parts, system=record.system)
    return {"request": request, "target": record.answer, "images": [p.path for p in request.images]}


def prompt_length(processor, prompt: str, ids: torch.Tensor, answer_ids: list[int], images: list) -> int:
    """How many of `ids` (one row's encoded prompt + answer, padding left off) belong to the prompt.
    `answer_ids` is the answer text tokenized alone, which is cheap; only if those tokens are not
    exactly the tail of `ids` (a template whose answer merges with the prompt's last characters) is
    the prompt encoded again, images and all."""
    start = len(ids) - len(answer_ids)
    if ids[start:].tolist() == answer_ids:
        return start
    return processor(text=[prompt], images=images or None, add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ].shape[1]


def encode_batch(processor, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """A batch's token ids of prompt + answer, right-padded, and the processor's vision tensors (Qwen-VL
    packs patches and grids per image, not per row), from one processor call: a call per example
    costs several times more, the processor's fixed cost per call being most of a small example's
    encoding. Labels mask each prompt and the padding, so only the answers are learned. This is the
    DataLoader's `collate_fn`, so it runs in the workers."""
    prompts, fulls, images = [], [], []
    for item in items:
        messages = chat_messages(item["request"], None, lambda _part: {"type": "image"})
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = processor.apply_chat_template(
            [*messages, {"role": "assistant", "content": item["target"]}], tokenize=False
        )
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the prompt differently with an answer appended")
        prompts.append(prompt)
        fulls.append(full)
        images.append([load_rgb(path) for path in item["images"]])
    batch = processor(
        text=fulls,
        images=[image for row in images for image in row] or None,
        add_special_tokens=False,
        padding=True,
        padding_side="right",
        return_tensors="pt",
    )
    answers = processor.tokenizer(
        [full[len(prompt) :] for prompt, full in zip(prompts, fulls, strict=True)], add_special_tokens=False
    )["input_ids"]
    labels = batch["input_ids"].clone()
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    for row, length in enumerate(lengths):
        masked = prompt_length(
            processor, prompts[row], batch["input_ids"][row, :length], answers[row], images[row]
        )
        labels[row, :masked] = IGNORE
        labels[row, length:] = IGNORE
    return {**dict(batch), "labels": labels}


def set_pixel_budget(processor, max_pixels: int, min_pixels: int) -> None:
    """Hold every image to [min_pixels, max_pixels] pixels, as LLaMA-Factory does before its
    processor call (src/llamafactory/data/mm_plugin.py `_preprocess_image`), by setting the Qwen-VL
    image processor's own bounds (`size`: `longest_edge` / `shortest_edge` are pixel counts), so the
    budget is saved with the critic's processor and every backend that loads the critic sizes images
    the same way. Where the processor's own bound is tighter it stays, as it does under
    LLaMA-Factory, whose resized image still passes through the processor."""
    image_processor = processor.image_processor
    size = dict(image_processor.size)
    longest = min(size.get("longest_edge") or max_pixels, max_pixels)
    shortest = max(size.get("shortest_edge") or min_pixels, min_pixels)
    if shortest > longest:
        raise ValueError(
            f"the pixel budget [{min_pixels}, {max_pixels}] leaves no size this processor allows"
        )
    image_processor.size = {"shortest_edge": shortest, "longest_edge": longest}


def target_tokens(labels: torch.Tensor) -> int:
    """How many tokens of a batch are learned: next-token targets that are not masked (the first
    position predicts nothing, so it is not counted, as in transformers' Trainer)."""
    return int((labels[:, 1:] != IGNORE).sum())


class SftDataset(torch.utils.data.Dataset):
    """Some records of an index (the training or the validation positions), each read when a
    DataLoader worker asks for it; `encode_batch` encodes them a batch at a time."""

    def __init__(self, index: RecordIndex, positions: np.ndarray) -> None:
        self.index, self.positions = index, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return example(self.index.record(int(self.positions[i])))


class EpochSampler(torch.utils.data.Sampler[int]):
    """A permutation drawn from (seed, epoch) alone: a resumed run sees the same order as an
    uninterrupted one without restoring any sampler state."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffles per epoch, as distributed samplers expect from the training loop."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def row_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed next-token cross-entropy over the answer tokens, and how many there are
    (one row at a time, so only one row's logits are ever upcast to float32)."""
    targets = labels[:, 1:]
    sums = torch.stack(
        [
            torch.nn.functional.cross_entropy(row[:-1].float(), target, ignore_index=IGNORE, reduction="sum")
            for row, target in zip(logits, targets, strict=True)
        ]
    )
    return sums, (targets != IGNORE).sum(dim=1)
