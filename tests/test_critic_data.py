"""The critic trainer's data and bookkeeping as pure functions: lazy record spans, the validation
split, the per-epoch order, padding, the validation loss sums, checkpoint discovery and the recipe's
checks. Hand-computed cases."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from firm_assets.critics.data import (
    IGNORE,
    EpochSampler,
    index_tasks,
    record_key,
    row_loss_sums,
    split_validation,
)
from firm_assets.critics.recipe import CriticTrainingConfig, effective_recipe
from firm_assets.critics.train import STATE_FILE, checkpoints
from firm_assets.curation.json_stream import json_values
from firm_assets.curation.sharegpt import ExportContractError, index_exports, sharegpt_record, write_tasks


@pytest.mark.parametrize("chunk_size", [1, 3, 1 << 20])
def test_json_values_gives_each_array_element_with_its_byte_span(tmp_path: Path, chunk_size: int) -> None:
    path = tmp_path / "records.json"
    text = '[\n {"a": "é\\u00e9"},\n {"b": [1, 2]} ,{"c": "]"}\n]\n'
    path.write_bytes(text.encode("utf-8"))
    found = list(json_values(path, chunk_size))
    assert [value for _, _, value in found] == [{"a": "éé"}, {"b": [1, 2]}, {"c": "]"}]
    assert [(start, end) for start, end, _ in found] == [(3, 20), (23, 36), (38, 48)]  # é is 2 bytes
    raw = path.read_bytes()
    assert [json.loads(raw[start:end]) for start, end, _ in found] == [value for _, _, value in found]


def test_json_values_reads_json_lines_and_empty_arrays(tmp_path: Path) -> None:
    (tmp_path / "lines.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    assert [(s, e, v) for s, e, v in json_values(tmp_path / "lines.jsonl", 4)] == [
        (0, 8, {"a": 1}),
        (9, 17, {"a": 2}),
    ]
    (tmp_path / "empty.json").write_text("[ ]")
    assert list(json_values(tmp_path / "empty.json")) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"a": 1}, {"b": ', r"broken.json at byte 11: Expecting value"),
        ('[{"a": 1}] {}', "after the closing"),
    ],
)
def test_json_values_refuses_a_broken_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "broken.json").write_text(text)
    with pytest.raises(ExportContractError, match=message):
        list(json_values(tmp_path / "broken.json", 4))


def test_record_key_ignores_key_order_and_spacing_but_not_content() -> None:
    assert record_key({"a": 1, "b": [2, 3]}) == record_key({"b": [2, 3], "a": 1})
    assert record_key({"a": 1}) != record_key({"a": 2})
    assert 0 <= record_key({"a": 1}) < 2**64


def _keys(*fractions: float) -> np.ndarray:
    return np.array([int(f * 2**64) for f in fractions], dtype=np.uint64)


def test_split_validation_holds_out_records_whose_key_is_below_the_fraction() -> None:
    train, val = split_validation(_keys(0.5, 0.01, 0.9, 0.015), 0.02)
    assert train.tolist() == [0, 2] and val.tolist() == [1, 3]


def test_split_validation_holds_out_at_least_one_and_trains_on_at_least_one() -> None:
    train, val = split_validation(_keys(0.5, 0.3, 0.9), 0.02)  # none below 2%: the smallest key
    assert train.tolist() == [0, 2] and val.tolist() == [1]
    train, val = split_validation(_keys(0.1, 0.2), 0.5)  # both below 50%: the larger one trains
    assert train.tolist() == [1] and val.tolist() == [0]
    train, val = split_validation(_keys(0.001), 0.02)  # a single record is never held out
    assert train.tolist() == [0] and val.tolist() == []
    train, val = split_validation(_keys(0.001, 0.5), 0.0)  # a fraction of 0 turns validation off
    assert train.tolist() == [0, 1] and val.tolist() == []


def test_epoch_sampler_order_depends_on_seed_and_epoch_only() -> None:
    sampler = EpochSampler(10, seed=42)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(EpochSampler(10, seed=42)) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(10)) and second != first
    again = EpochSampler(10, seed=42)
    again.set_epoch(1)
    assert list(again) == second and list(EpochSampler(10, seed=7)) != first


def test_row_loss_sums_add_the_answer_tokens_next_token_losses() -> None:
    # row 0: position 0 is uniform over 3 tokens (loss ln 3 for token 1); position 1 gives token 0
    # probability 2/4 (loss ln 2); the last position predicts nothing. Row 1 learns one token only.
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [9.0, 9.0, 9.0]],
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [9.0, 9.0, 9.0]],
        ]
    )
    labels = torch.tensor([[IGNORE, 1, 0], [IGNORE, IGNORE, 2]])
    sums, counts = row_loss_sums(logits, labels)
    assert sums.tolist() == pytest.approx([math.log(6), math.log(3)])
    assert counts.tolist() == [2, 1]
    # the token mean is what the model's own loss is: cross-entropy over the shifted labels
    mean = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 3), labels[:, 1:].reshape(-1))
    assert (sums.sum() / counts.sum()).item() == pytest.approx(mean.item())


def _export(root: Path, answers: list[str]) -> Path:
    folder = root / "data" / "v1"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(folder / "images" / "0.png")
    records = [
        sharegpt_record("Grade.", f"Image {i}?", ["data/v1/images/0.png"], a) for i, a in enumerate(answers)
    ]
    write_tasks(folder, "data", "v1", {"task": records})
    index_exports(root)
    return folder


def test_index_tasks_reads_back_each_record_from_its_span(tmp_path: Path) -> None:
    folder = _export(tmp_path, ["one ü", "two", "three <image> literally"])
    index = index_tasks(folder, ["task"])
    assert len(index) == 3 and index.keys.dtype == np.uint64
    assert [index.record(i).answer for i in range(3)] == ["one ü", "two", "three <image> literally"]
    assert index.record(1).user == (folder / "images" / "0.png", "Image 1?")


def test_index_tasks_names_the_first_broken_record(tmp_path: Path) -> None:
    folder = _export(tmp_path, ["a", "b", "c"])
    records = json.loads((folder / "task.json").read_text())
    records[1] = ["not", "an", "object"]
    (folder / "task.json").write_text(json.dumps(records))
    with pytest.raises(ExportContractError, match=r"data/v1/task.json record 1: a record is not an object"):
        index_tasks(folder, ["task"])


def test_checkpoints_lists_only_complete_ones_oldest_first(tmp_path: Path) -> None:
    for name, complete in [("step-00000010", True), ("step-00000002", True), ("step-00000011", False)]:
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / STATE_FILE).write_text("{}")
    (tmp_path / ".step-00000012.tmp").mkdir()
    (tmp_path / ".step-00000012.tmp" / STATE_FILE).write_text("{}")
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000002", "step-00000010"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"eval_every": -1}, "eval_every must not be negative"),
    ],
)
def test_effective_recipe_refuses_impossible_values(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        effective_recipe({}, CriticTrainingConfig(**override))


def test_run_config_overrides_the_new_recipe_keys() -> None:
    recipe = effective_recipe({"gradient_checkpointing": False}, CriticTrainingConfig(checkpoint_every=5))
    assert (recipe["gradient_checkpointing"], recipe["checkpoint_every"], recipe["val_fraction"]) == (
        False,
        5,
        0.02,
    )


def test_encode_masks_exactly_the_prompt_as_a_separate_encoding_would(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    from transformers import AutoProcessor

    from firm_assets.critics.data import chat_messages, encode_batch, example

    processor = AutoProcessor.from_pretrained(tiny_models["tiny-qwen3-vl"])
    folder = _export(tmp_path, ['{"reasoning": "red", "score": 5}'])
    item = example(index_tasks(folder, ["task"]).record(0))
    encoded = encode_batch(processor, [item])
    messages = chat_messages(item["request"], None, lambda _part: {"type": "image"})
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    with Image.open(item["images"][0]) as image:
        prompt_ids = processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt")["input_ids"]
    masked = int((encoded["labels"] == IGNORE).sum())
    assert masked == prompt_ids.shape[1]
    assert encoded["labels"][0, masked:].tolist() == encoded["input_ids"][0, masked:].tolist()


def test_a_batch_holds_each_example_as_encoded_alone_right_padded(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    from transformers import AutoProcessor

    from firm_assets.critics.data import encode_batch, example

    processor = AutoProcessor.from_pretrained(tiny_models["tiny-qwen3-vl"])
    processor.tokenizer.padding_side = "left"  # a tokenizer that pads on the left is overridden
    folder = _export(
        tmp_path, ['{"score": 5}', '{"reasoning": "a much longer answer than the first", "score": 1}']
    )
    index = index_tasks(folder, ["task"])
    items = [example(index.record(i)) for i in range(2)]
    batch = encode_batch(processor, items)
    alone = [encode_batch(processor, [item]) for item in items]
    short, width = alone[0]["input_ids"].shape[1], alone[1]["input_ids"].shape[1]
    assert short < width and batch["input_ids"].shape == (2, width)
    pad = processor.tokenizer.pad_token_id
    for key, padding in (
        ("input_ids", pad),
        ("attention_mask", 0),
        ("labels", IGNORE),
        ("mm_token_type_ids", 0),
    ):
        assert batch[key][0].tolist() == alone[0][key][0].tolist() + [padding] * (width - short), key
        assert batch[key][1].tolist() == alone[1][key][0].tolist(), key
    for key in ("pixel_values", "image_grid_thw"):  # per image, in row order
        assert torch.equal(batch[key], torch.cat([one[key] for one in alone])), key


def test_prompt_length_encodes_the_prompt_again_when_the_answer_merges_with_it(
    tiny_models: dict[str, Path],
) -> None:
    from transformers import AutoProcessor

    from firm_assets.critics.data import prompt_length

    processor = AutoProcessor.from_pretrained(tiny_models["tiny-qwen3-vl"])
    tokenizer = processor.tokenizer
    full_ids = torch.tensor(tokenizer("reasoning", add_special_tokens=False)["input_ids"])  # re|ason|ing
    # the answer "soning" alone does not end "reasoning" tokenized whole, so the tail check fails
    answer = tokenizer("soning", add_special_tokens=False)["input_ids"]
    assert full_ids[-len(answer) :].tolist() != answer
    prompt_ids = tokenizer("rea", add_special_tokens=False)["input_ids"]
    assert prompt_length(processor, "rea", full_ids, answer, []) == len(prompt_ids) == 2
    # a clean boundary: the answer's own tokens are the tail
    full_ids = torch.tensor(tokenizer("hello\nscore", add_special_tokens=False)["input_ids"])
    answer = tokenizer("score", add_special_tokens=False)["input_ids"]
    start = prompt_length(processor, "hello\n", full_ids, answer, [])
    assert full_ids[start:].tolist() == answer and start == len(full_ids) - len(answer)
