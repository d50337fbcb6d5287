"""Image statistics for reward-hacking monitors, on images whose values are known by hand."""

from __future__ import annotations

import pytest
from PIL import Image

from firm_assets.rl.monitors import image_statistics


def two_colour(left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (4, 2), left)
    image.paste(Image.new("RGB", (2, 2), right), (2, 0))
    return image


def test_all_black_image() -> None:
    stats = image_statistics([Image.new("RGB", (8, 8), (0, 0, 0))])
    assert stats == {"brightness": 0.0, "saturation": 0.0, "colour_entropy": 0.0, "near_black_fraction": 1.0}


def test_pure_red_image() -> None:
    stats = image_statistics([Image.new("RGB", (8, 8), (255, 0, 0))])
    assert stats["brightness"] == pytest.approx(0.299)
    assert stats["saturation"] == pytest.approx(1.0)
    assert stats["colour_entropy"] == 0.0
    assert stats["near_black_fraction"] == 0.0


def test_half_black_half_white_has_one_bit_of_colour_entropy() -> None:
    stats = image_statistics([two_colour((0, 0, 0), (255, 255, 255))])
    assert stats["brightness"] == pytest.approx(0.5)
    assert stats["saturation"] == 0.0
    assert stats["colour_entropy"] == pytest.approx(1.0)
    assert stats["near_black_fraction"] == 0.5


def test_half_red_half_grey_saturation_and_nearby_colours_share_a_bin() -> None:
    # Red has saturation 1, grey 0; two greys 10 levels apart fall in the same coarse bin.
    stats = image_statistics([two_colour((255, 0, 0), (128, 128, 128))])
    assert stats["saturation"] == pytest.approx(0.5)
    assert stats["brightness"] == pytest.approx((0.299 + 128 / 255) / 2)
    assert image_statistics([two_colour((128, 128, 128), (138, 138, 138))])["colour_entropy"] == 0.0


def test_batch_values_are_means_and_other_modes_are_converted() -> None:
    black = Image.new("RGB", (8, 8), (0, 0, 0))
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    grey = Image.new("L", (4, 4), 255)  # white, given as greyscale
    stats = image_statistics([black, red, grey])
    assert stats["brightness"] == pytest.approx((0.0 + 0.299 + 1.0) / 3)
    assert stats["saturation"] == pytest.approx(1 / 3)
    assert stats["near_black_fraction"] == pytest.approx(1 / 3)


def test_empty_batch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        image_statistics([])
