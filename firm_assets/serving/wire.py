"""Wire format version 1 of the reward server: the JSON bodies of `/v1/edit` and `/v1/gen`.

Images travel as base64 PNG or JPEG strings (never pickled objects). The server reads each image's
header first (size in bytes, width x height, per image and summed over the request) and refuses an
oversized request with 413 before decoding any pixels; an image that does not decode is that item's
masked result; a decoded image is shrunk to the critic's pixel budget before it is batched.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from firm_assets.critics.rewards import Reward, RewardConfig

if TYPE_CHECKING:  # types only: the scorer's imports stay out of `firm serve`'s option parsing
    from firm_assets.critics.scoring import DimensionScore, EditScores, GenScores

WIRE_VERSION = 1
MAX_ITEMS_PER_REQUEST = 64
IMAGE_FORMATS = ("PNG", "JPEG")
RESIZABLE_MODES = ("RGB", "RGBA", "L", "LA")

ScoreModeField = Literal["parsed", "expectation"]
Text = Annotated[str, Field(min_length=1, max_length=4000)]
ImageData = Annotated[
    str,
    Field(
        min_length=1,
        description="A PNG or JPEG file as base64 (a `data:image/...;base64,` prefix is accepted).",
        json_schema_extra={
            "contentEncoding": "base64",
            "anyOf": [{"contentMediaType": "image/png"}, {"contentMediaType": "image/jpeg"}],
        },
    ),
]
RequestId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
Weight = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False, strict=True)]  # no true/"1" as 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


BOTH_WEIGHTS_ZERO = {"required": ["w1", "w2"], "properties": {"w1": {"const": 0}, "w2": {"const": 0}}}


class RewardOverride(_Strict):
    """Changes to the endpoint's default reward config (CME for edit, QMA for gen); unset fields keep
    the default, so `{"formula": "execution_only"}` is the paper's ablation with default weights.
    Every rule is in the schema (each endpoint lists its own formulas; the weights may not both be
    0), so a request the schema allows is a request the server takes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": BOTH_WEIGHTS_ZERO})

    formula: Literal["cme", "qma", "execution_only", "naive_sum"] | None = None
    w1: Weight | None = None
    w2: Weight | None = None
    normalisation: Literal["minus1_over4", "over5"] | None = None

    @model_validator(mode="after")
    def _weights(self) -> RewardOverride:
        if self.w1 == 0 and self.w2 == 0:
            raise ValueError("reward weights must not both be zero")
        return self

    def apply(self, default: RewardConfig) -> RewardConfig:
        """The default with these changes, validated as a whole (raises pydantic.ValidationError)."""
        changes = self.model_dump(exclude_none=True)
        return RewardConfig.model_validate({**default.model_dump(), **changes})


class EditRewardOverride(RewardOverride):
    """Per-request choice of the editing reward formula."""

    formula: Literal["cme", "execution_only", "naive_sum"] | None = None


class GenRewardOverride(RewardOverride):
    """Per-request choice of the generation reward formula."""

    formula: Literal["qma", "execution_only", "naive_sum"] | None = None


class EditItem(_Strict):
    """One edit to score: source, edited image and instruction."""

    source: ImageData
    edited: ImageData
    instruction: Text
    requirement: Text | None = None


class GenItem(_Strict):
    """One generated image to score, with its prompt."""

    image: ImageData
    prompt: Text


class _ScoreRequest(_Strict):
    mode: ScoreModeField = "expectation"
    request_id: RequestId | None = Field(
        default=None, description="Echoed in the response; generated when absent."
    )


class EditRequest(_ScoreRequest):
    """A rollout group of edits: every item's execution and consistency questions go to the critic in
    one batch."""

    items: list[EditItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)
    reward: EditRewardOverride | None = None


class GenRequest(_ScoreRequest):
    """A batch of generation items to score."""

    items: list[GenItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)
    reward: GenRewardOverride | None = None


class Score(BaseModel):
    """One critic dimension on its 1-5 scale; `score` is null and `failure` says why when the critic's
    answer for this item failed; `fallback` says why an expectation score fell back to the parsed one."""

    score: float | None
    failure: str | None
    fallback: str | None = None

    @classmethod
    def of(cls, dimension: DimensionScore) -> Score:
        """A critic score in wire form."""
        return cls(score=dimension.score, failure=dimension.failure, fallback=dimension.fallback)


class RewardOut(BaseModel):
    """The combined reward in [0, 1]; null with `masked` true when a critic answer failed (never 0)."""

    value: float | None
    masked: bool
    reason: str | None

    @classmethod
    def of(cls, reward: Reward) -> RewardOut:
        """A reward in wire form."""
        return cls(value=reward.value, masked=reward.masked, reason=reward.reason)


class RewardConfigOut(BaseModel):
    """The reward settings in force, echoed so clients know what they got."""

    formula: str
    w1: float
    w2: float
    normalisation: str


class EditResult(BaseModel):
    """One editing item's scores and reward."""

    execution: Score
    consistency: Score
    reward: RewardOut


class GenResult(BaseModel):
    """One generation item's scores and reward."""

    instruction: Score
    quality: Score
    reward: RewardOut


class _ScoreResponse(BaseModel):
    wire_version: Literal[1] = WIRE_VERSION
    request_id: str
    critic_version: str = Field(description="The critic that scored: lineage for the RL run.")
    mode: ScoreModeField
    reward_config: RewardConfigOut


class EditResponse(_ScoreResponse):
    """The answer to an editing request, one result per item."""

    results: list[EditResult]


class GenResponse(_ScoreResponse):
    """The answer to a generation request, one result per item."""

    results: list[GenResult]


class Limits(BaseModel):
    """What one request may hold: a client splits a larger step into requests within these."""

    max_items: int
    max_body_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    max_request_pixels: int


class Health(BaseModel):
    """The server's state, so clients wait for loading and stop on failure."""

    status: Literal["ok", "loading", "failed", "stopping"]
    critic_version: str | None
    detail: str | None = None
    limits: Limits | None = None


def edit_result(scores: EditScores, reward: Reward) -> EditResult:
    """An editing item's scores and reward in wire form."""
    return EditResult(
        execution=Score.of(scores.execution),
        consistency=Score.of(scores.consistency),
        reward=RewardOut.of(reward),
    )


def gen_result(scores: GenScores, reward: Reward) -> GenResult:
    """A generation item's scores and reward in wire form."""
    return GenResult(
        instruction=Score.of(scores.instruction),
        quality=Score.of(scores.quality),
        reward=RewardOut.of(reward),
    )


@dataclass(frozen=True)
class ImageLimits:
    """Size limits an incoming image must meet before it is decoded."""

    max_bytes: int
    max_pixels: int


class ImageRejected(ValueError):
    """An image field the server will not score: `status` 413 (over a limit: the whole request is
    refused) or 400 (not a PNG/JPEG: that item is masked)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ProbedImage:
    """An image's bytes and the canvas its header declares; no pixel has been decoded yet."""

    raw: bytes
    width: int
    height: int

    @property
    def pixels(self) -> int:
        """Pixel count, checked against the limit before decoding."""
        return self.width * self.height


def probe_image(data: str, limits: ImageLimits) -> ProbedImage:
    """A base64 PNG/JPEG string's bytes and header size, checked against the byte and pixel limits
    without decoding pixels (a tiny file can claim a huge canvas)."""
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if not header.endswith(";base64"):
            raise ImageRejected(400, "a data: URL image must be base64 (`;base64,`)")
    if len(data) > (limits.max_bytes + 2) // 3 * 4 + 4:
        raise ImageRejected(413, f"image is larger than {limits.max_bytes} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageRejected(400, f"image is not valid base64: {error}") from None
    if len(raw) > limits.max_bytes:
        raise ImageRejected(413, f"image is {len(raw)} bytes, the limit is {limits.max_bytes}")
    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as error:
        limit = f"the limit is {limits.max_pixels} pixels"
        raise ImageRejected(413, f"decompression bomb: {error}; {limit}") from None
    except Image.UnidentifiedImageError as error:
        raise ImageRejected(400, f"not a PNG or JPEG image: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise _unreadable(error) from None
    if width * height > limits.max_pixels:
        raise ImageRejected(413, f"image is {width}x{height} pixels, the limit is {limits.max_pixels} pixels")
    return ProbedImage(raw, width, height)


def load_image(probe: ProbedImage, pixel_budget: int | None) -> Image.Image:
    """The probed image decoded as RGB and, when it holds more than `pixel_budget` pixels, shrunk
    (aspect kept) to fit it: the critic's processor would shrink it anyway, after the batch had held
    the full canvas."""
    try:
        with Image.open(io.BytesIO(probe.raw), formats=IMAGE_FORMATS) as image:
            size = fitted_size(probe.width, probe.height, pixel_budget)
            if size == image.size:
                return image.convert("RGB")
            image.draft("RGB", size)  # JPEG: decode at a reduced scale; PNG: no effect
            if image.mode not in RESIZABLE_MODES:  # palette and 1-bit images resize only by nearest
                image = image.convert("RGB")
            # shrink first (one full-size buffer, never a second full-size copy), then convert
            return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0).convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise _unreadable(error) from None


def fitted_size(width: int, height: int, pixel_budget: int | None) -> tuple[int, int]:
    """The largest size of the same aspect with at most `pixel_budget` pixels (no budget: as is)."""
    if pixel_budget is None or width * height <= pixel_budget:
        return width, height
    scale = math.sqrt(pixel_budget / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _unreadable(error: Exception) -> ImageRejected:
    """PIL's refusal as the server's: a text chunk that inflates past PIL's cap is a decompression
    bomb (413), anything else an image that does not decode (400)."""
    if "decompressed data too large" in str(error).lower():
        return ImageRejected(413, f"decompression bomb: {error}")
    return ImageRejected(400, f"image does not decode: {error}")


def encode_image(image: Image.Image) -> str:
    """An image as the wire's base64 PNG string (lossless, so the critic sees the rollout as drawn)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
