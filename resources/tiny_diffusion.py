"""Tiny random-weight diffusers pipelines of the production architectures, built offline.

Tests and local runs need a FluxKontext (image editing) and an SD3 (text-to-image) pipeline
that load through `DiffusionPipeline.from_pretrained` exactly like real weights, but the model
hubs are unreachable and real weights are tens of GB. So every component (tokenizers included)
is built here from code, seeded, and saved with `save_pretrained`: about 1 MB, a second or two.
"""

from __future__ import annotations

import json
import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

MARKER = "firm_tiny.json"
# Bump when the architecture below changes so stale folders are rebuilt.
BUILD_VERSION = 1
SEED = 0

PRODUCTION = {
    "tiny-flux-kontext": "black-forest-labs/FLUX.1-Kontext-dev",
    "tiny-sd3": "stabilityai/stable-diffusion-3.5-medium",
}

_WORDS = ("a", "the", "of", "and", "in", "on", "to", "make", "add", "photo", "red", "blue", "cat", "dog")


def _clip_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE like openai/clip-vit-large-patch14, with a small vocabulary.

    Every byte is a token (alone and as a word end, `</w>`), so any text encodes; a few merges for
    common words keep token sequences realistic. Specials come last, as in the real vocabulary.
    """
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        current = word[0]
        for i, char in enumerate(word[1:], start=1):
            right = char + "</w>" if i == len(word) - 1 else char
            merges.append((current, right))
            current += right
            tokens.append(current)
    vocab: dict[str, int] = {}
    for token in [*tokens, "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _t5_tokenizer() -> T5Tokenizer:
    """A Unigram (SentencePiece-style) tokenizer like google/t5-v1_1-xxl's, from a small vocabulary."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -4.0) for word in _WORDS]
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces += [(char, -8.0) for char in chars] + [("▁" + char, -9.0) for char in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_config(tokenizer: CLIPTokenizer, hidden: int, projection: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        projection_dim=projection,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_encoder(tokenizer: T5Tokenizer, d_model: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _vae(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """Four blocks, so the latent is 1/8 of the image with 16 channels, as in production."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _seeded(build: Callable[[], object]) -> object:
    """Build one component from a fixed seed, leaving the caller's global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build()


def tiny_flux_kontext() -> FluxKontextPipeline:
    """FLUX.1-Kontext-dev's layout: CLIP-L + T5 text encoders, guidance-distilled Flux transformer."""
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _t5_tokenizer()
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_seeded(lambda: _vae(scaling_factor=0.3611, shift_factor=0.1159)),
        text_encoder=_seeded(lambda: CLIPTextModel(_clip_config(tokenizer, hidden=32, projection=32))),
        tokenizer=tokenizer,
        text_encoder_2=_seeded(lambda: _t5_encoder(tokenizer_2, d_model=32)),
        tokenizer_2=tokenizer_2,
        transformer=_seeded(
            lambda: FluxTransformer2DModel(
                patch_size=1,
                in_channels=64,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=32,
                pooled_projection_dim=32,
                guidance_embeds=True,
                axes_dims_rope=(4, 4, 8),
            )
        ),
        image_encoder=None,
        feature_extractor=None,
    )


def tiny_sd3() -> StableDiffusion3Pipeline:
    """SD3.5-medium's layout: CLIP-L and CLIP-G (with projections, unequal widths) + T5, MMDiT-X
    transformer with dual attention and RMS qk-norm."""
    tokenizer = _clip_tokenizer()
    tokenizer_3 = _t5_tokenizer()
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_seeded(lambda: _vae(scaling_factor=1.5305, shift_factor=0.0609)),
        text_encoder=_seeded(
            lambda: CLIPTextModelWithProjection(_clip_config(tokenizer, hidden=16, projection=16))
        ),
        tokenizer=tokenizer,
        text_encoder_2=_seeded(
            lambda: CLIPTextModelWithProjection(_clip_config(tokenizer, hidden=32, projection=32))
        ),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_seeded(lambda: _t5_encoder(tokenizer_3, d_model=64)),
        tokenizer_3=tokenizer_3,
        transformer=_seeded(
            lambda: SD3Transformer2DModel(
                sample_size=8,
                patch_size=2,
                in_channels=16,
                num_layers=2,
                attention_head_dim=8,
                num_attention_heads=4,
                joint_attention_dim=64,
                caption_projection_dim=32,
                pooled_projection_dim=48,
                out_channels=16,
                pos_embed_max_size=32,
                dual_attention_layers=(0,),
                qk_norm="rms_norm",
            )
        ),
    )


_BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    "tiny-flux-kontext": tiny_flux_kontext,
    "tiny-sd3": tiny_sd3,
}


def _is_built(folder: Path) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("build_version") == BUILD_VERSION
    except (OSError, ValueError):
        return False


def _build_one(name: str, folder: Path) -> None:
    """Save into a temporary sibling, write the marker last, then rename: a reader never sees a
    half-written folder, and an interrupted build is simply redone."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        pipeline = _BUILDERS[name]()
        pipeline.save_pretrained(tmp, safe_serialization=True)
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "pipeline": type(pipeline).__name__,
                    "production": PRODUCTION[name],
                    "seed": SEED,
                    "build_version": BUILD_VERSION,
                },
                indent=2,
            )
        )
        if folder.exists():
            if _is_built(folder):  # another process finished first
                return
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_tiny_diffusion(dest: Path) -> dict[str, Path]:
    """Build (once) the tiny pipelines under `dest`; returns {"tiny-flux-kontext": path, "tiny-sd3": path}."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in _BUILDERS:
        folder = dest / name
        if not _is_built(folder):
            _build_one(name, folder)
        paths[name] = folder
    return paths
