"""The offline tiny Qwen3-VL / Qwen3 builder: real classes, fast, deterministic, idempotent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    Qwen3ForCausalLM,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from resources.tiny_models import (
    BUILDER_VERSION,
    MARKER,
    MAX_PIXELS,
    PATCH_SIZE,
    SPECIAL_TOKENS,
    TEXT_NAME,
    VL_NAME,
    build_tiny_models,
    main,
)

IMAGE_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Rate it."}]},
]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*")}


def test_build_is_fast_complete_and_leaves_no_staging(tmp_path: Path) -> None:
    start = time.process_time()  # CPU seconds: a loaded machine stretches the wall, not the work
    folders = build_tiny_models(tmp_path)
    assert time.process_time() - start < 20
    assert set(folders) == {VL_NAME, TEXT_NAME}
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([VL_NAME, TEXT_NAME])
    for folder in folders.values():
        assert json.loads((folder / MARKER).read_text())["builder_version"] == BUILDER_VERSION
        assert list(folder.glob("*.safetensors"))


def test_rebuild_is_idempotent(tiny_models: dict[str, Path]) -> None:
    before = {name: _mtimes(folder) for name, folder in tiny_models.items()}
    assert build_tiny_models(next(iter(tiny_models.values())).parent) == tiny_models
    assert {name: _mtimes(folder) for name, folder in tiny_models.items()} == before


def test_builds_are_deterministic(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    again = build_tiny_models(tmp_path)
    for name, folder in tiny_models.items():
        assert (again[name] / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
        assert (again[name] / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()


def test_incomplete_folder_is_rebuilt(tmp_path: Path) -> None:
    stale = tmp_path / VL_NAME
    stale.mkdir()
    (stale / "leftover.txt").write_text("half a build")
    folders = build_tiny_models(tmp_path)
    assert not (stale / "leftover.txt").exists()
    assert (folders[VL_NAME] / MARKER).exists()


def test_processor_reloads_as_qwen3_vl_and_makes_few_patches(tiny_models: dict[str, Path]) -> None:
    processor = AutoProcessor.from_pretrained(tiny_models[VL_NAME])
    assert isinstance(processor, Qwen3VLProcessor)
    text = processor.apply_chat_template(IMAGE_MESSAGES, tokenize=False, add_generation_prompt=True)
    for size, grid in [((64, 64), [1, 8, 8]), ((640, 480), [1, 6, 8])]:
        batch = processor(text=[text], images=[Image.new("RGB", size, "red")], return_tensors="pt")
        assert batch["image_grid_thw"].tolist() == [grid]
        patches = grid[1] * grid[2]
        assert patches * PATCH_SIZE**2 <= MAX_PIXELS
        assert tuple(batch["pixel_values"].shape) == (patches, 3 * 2 * PATCH_SIZE**2)
        image_tokens = (batch["input_ids"] == processor.image_token_id).sum().item()
        assert image_tokens == patches // 4  # 2x2 spatial merge


@pytest.mark.parametrize("name", [VL_NAME, TEXT_NAME])
def test_tokenizer_digits_and_special_tokens(tiny_models: dict[str, Path], name: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[name])
    assert [len(tokenizer.encode(digit, add_special_tokens=False)) for digit in "12345"] == [1] * 5
    for token in SPECIAL_TOKENS:
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.decode(tokenizer.encode("Héllo, world 42!")) == "Héllo, world 42!"


def test_chat_template_renders_qwen_chatml(tiny_models: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[TEXT_NAME])
    rendered = tokenizer.apply_chat_template(IMAGE_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Rate it.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    continued = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Score:"}],
        tokenize=False,
        continue_final_message=True,
    )
    assert continued == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nScore:"


def test_models_load_through_auto_classes(tiny_models: dict[str, Path]) -> None:
    vl = AutoModelForImageTextToText.from_pretrained(tiny_models[VL_NAME])
    text = AutoModelForCausalLM.from_pretrained(tiny_models[TEXT_NAME])
    assert isinstance(vl, Qwen3VLForConditionalGeneration)
    assert isinstance(text, Qwen3ForCausalLM)
    assert vl.num_parameters() < 1_000_000
    assert text.num_parameters() < 1_000_000


def test_main_builds_into_the_given_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(tmp_path)])
    assert f"{VL_NAME}\t{tmp_path / VL_NAME}" in capsys.readouterr().out
    assert (tmp_path / TEXT_NAME / MARKER).exists()
