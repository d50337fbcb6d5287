"""Image statistics watched every RL step: a policy that hacks its reward often drifts in plain
pixel terms first (washed-out, oversaturated, single-colour or black images), long before a
held-out critic notices. These are cheap, model-free and comparable across runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

# Rec. 601 luma weights, the ones PIL uses for its "L" conversion.
LUMA = np.array([0.299, 0.587, 0.114])
NEAR_BLACK_LUMA = 0.05
# Bins per channel of the coarse RGB histogram: 4 x 4 x 4 = 64 colours, so JPEG-like noise does
# not count as colour variety but a change of hue does.
HISTOGRAM_BINS = 4


def _single_image(image: Image.Image) -> dict[str, float]:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    luma = rgb @ LUMA
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    bins = np.minimum((rgb * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
    codes = (bins[..., 0] * HISTOGRAM_BINS + bins[..., 1]) * HISTOGRAM_BINS + bins[..., 2]
    counts = np.bincount(codes.ravel(), minlength=HISTOGRAM_BINS**3)
    shares = counts[counts > 0] / codes.size
    return {
        "brightness": float(luma.mean()),
        "saturation": float(saturation.mean()),
        "colour_entropy": float(-(shares * np.log2(shares)).sum()),
        "near_black_fraction": float((luma < NEAR_BLACK_LUMA).mean()),
    }


def image_statistics(images: Sequence[Image.Image]) -> dict[str, float]:
    """Means over the batch of: brightness (mean luma in [0, 1]), saturation (mean HSV saturation),
    colour_entropy (bits, over a 64-colour RGB histogram) and near_black_fraction (share of
    pixels with luma below 0.05)."""
    if not images:
        raise ValueError("image_statistics needs at least one image")
    per_image = [_single_image(image) for image in images]
    return {key: float(np.mean([stats[key] for stats in per_image])) for key in per_image[0]}
