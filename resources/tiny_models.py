"""Tiny, randomly initialised models of the production architectures (Qwen3-VL and Qwen3), built
offline in seconds so tests and local runs load them through the same `from_pretrained` path as
real weights. Seeded: every build writes the same weights, so their hash (the revision) is stable."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

BUILDER_VERSION = 2  # 2: the chat template's enable_thinking switch
MARKER = "firm_tiny.json"
SEED = 0
VL_NAME = "tiny-qwen3-vl"
TEXT_NAME = "tiny-qwen3"

# Qwen's own pre-tokenizer split: digits are isolated, so "1".."5" are single byte-level tokens.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
BPE_VOCAB_SIZE = 512
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
CORPUS = """
You are a careful judge of image edits. Look at the source image and the edited image, read the
instruction, and rate how well the edit follows it on a scale from 1 to 5. A score of 1 means the
edit ignores the instruction; 5 means it is followed exactly and the rest of the picture is kept.
Describe the scene: a red car on a street, a cat sleeping on a blue sofa, two people walking a dog
in the park, a bowl of fruit on a wooden table, a mountain lake at sunset with clouds in the sky.
Remove the person in the background. Change the color of the shirt to green. Add a hat to the man.
Replace the sky with a starry night. Make the photo look like a watercolor painting. Turn the day
into night and keep the lighting consistent. The answer is a number followed by a short reason.
Plan the next prompts: write a list of diverse editing instructions with objects, styles, colors,
textures, people, animals, buildings, food, vehicles, text and signs, weather and seasons.
"""

# Qwen-style ChatML. Content is a string or a list of {"type": "image"|"video"|"text"} parts; every
# message's text is emitted verbatim so `continue_final_message` can cut the chat after it. Like
# Qwen3's own template, `enable_thinking=False` opens the answer with an empty think block.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] }}"
    "{%- else %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' %}{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Vision: 8-pixel patches merged 2x2, images capped at 64x64 pixels -> at most 16 image tokens.
PATCH_SIZE = 8
MERGE_SIZE = 2
MIN_PIXELS = 32 * 32
MAX_PIXELS = 64 * 64
TEXT_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 4096,
}


def build_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE trained on a built-in corpus with Qwen's pre-tokenizer and special tokens."""
    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(CORPUS.split("\n"), trainer)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=[tuple(pair) for pair in model["merges"]],
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [AddedToken(token, special=True) for token in SPECIAL_TOKENS[1:]]}
    )
    tokenizer.eos_token = "<|im_end|>"  # an instruct model's turn ends its answer, as in Qwen's releases
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = TEXT_DIMS["max_position_embeddings"]
    return tokenizer


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen3VLProcessor:
    """The production processor classes, sized so images and video frames become few patches."""
    common = {
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": 2,
        "merge_size": MERGE_SIZE,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, **common
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 2 * MIN_PIXELS, "longest_edge": 4 * MAX_PIXELS}, **common
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Instruct-model stopping: <|im_end|> or <|endoftext|>; greedy unless the caller says otherwise."""
    return GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


def _seeded(factory: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    """Initialise under a fixed seed without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return factory()


def build_vl_model(tokenizer: Qwen2Tokenizer) -> Qwen3VLForConditionalGeneration:
    """A two-layer Qwen3-VL with a two-block vision tower and one deepstack merger."""
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config={
            **TEXT_DIMS,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [2, 3, 3],  # sums to head_dim / 2
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": 2,
            "out_hidden_size": TEXT_DIMS["hidden_size"],
            "num_position_embeddings": 64,  # an 8x8 grid, interpolated to the image's patch grid
            "deepstack_visual_indexes": [1],
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return _seeded(lambda: Qwen3VLForConditionalGeneration(config))


def build_text_model(tokenizer: Qwen2Tokenizer) -> Qwen3ForCausalLM:
    """A two-layer Qwen3 causal LM sharing the VL model's tokenizer."""
    config = Qwen3Config(
        **TEXT_DIMS,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,  # tied random embeddings just echo the last token
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    )
    return _seeded(lambda: Qwen3ForCausalLM(config))


def _write_vl(folder: Path, tokenizer: Qwen2Tokenizer) -> None:
    model = build_vl_model(tokenizer)
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(folder)
    build_processor(tokenizer).save_pretrained(folder)


def _write_text(folder: Path, tokenizer: Qwen2Tokenizer) -> None:
    model = build_text_model(tokenizer)
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _is_complete(folder: Path) -> bool:
    """A folder is complete once its marker, written last, names the current builder version."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("builder_version") == BUILDER_VERSION


def _build_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling and rename it into place, so a killed build leaves no half
    folder and a concurrent builder that wins the race is kept."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the models are meant to be shared
    try:
        write(staging)
        (staging / MARKER).write_text(json.dumps({"builder_version": BUILDER_VERSION, "seed": SEED}))
        if _is_complete(target):  # a concurrent builder finished first
            return
        if target.exists():  # stale: an older builder version, or no marker
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_tiny_models(dest: Path) -> dict[str, Path]:
    """Build (or reuse) the tiny models under `dest`; returns {name: folder}."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    writers = {VL_NAME: _write_vl, TEXT_NAME: _write_text}
    folders = {name: dest / name for name in writers}
    missing = [name for name, folder in folders.items() if not _is_complete(folder)]
    if missing:
        tokenizer = build_tokenizer()
        for name in missing:
            _build_atomically(folders[name], lambda staging, w=writers[name]: w(staging, tokenizer))
    return folders


def main(argv: list[str] | None = None) -> None:
    """`python -m resources.tiny_models DEST`: build the tiny models into DEST and print their paths."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m resources.tiny_models DEST")
    for name, folder in build_tiny_models(Path(args[0])).items():
        print(f"{name}\t{folder}")


if __name__ == "__main__":
    main()
