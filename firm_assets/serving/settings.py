"""The reward server's knobs, shared by `firm serve`, the tests and the benchmark."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from firm_assets.critics.rewards import RewardConfig
from firm_assets.serving.wire import MAX_ITEMS_PER_REQUEST


class ServerSettings(BaseModel):
    """The reward server's batching, limits and reward settings, validated at start."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch: int = Field(32, ge=1, description="Items per critic batch at most")
    max_wait_ms: float = Field(
        1000.0, ge=0, description="Longest wait for a fuller batch (the wait itself is batch_wait_fraction)"
    )
    batch_wait_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="An under-full batch waits for more requests this fraction of a batch's measured cost",
    )
    queue_size: int = Field(256, ge=1, description="Requests waiting at most; beyond it: 429")
    cross_request_batching: bool = True  # off: one critic batch per request (the benchmark's baseline)
    request_timeout_s: float = Field(120.0, gt=0, description="Queue wait plus scoring; beyond it: 504")
    retry_after_s: int = Field(1, ge=1, description="Least Retry-After sent with 429 and 503")
    expected_load_s: float = Field(
        60.0, gt=0, description="How long loading the critic takes (Retry-After while it loads)"
    )
    max_items: int = Field(
        MAX_ITEMS_PER_REQUEST,
        ge=1,
        le=MAX_ITEMS_PER_REQUEST,
        description="Items per request at most; beyond it: 413",
    )
    max_body_bytes: int = Field(64 * 2**20, ge=1024)
    max_image_bytes: int = Field(16 * 2**20, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    max_request_pixels: int = Field(
        64 * 2**20, ge=1, description="Decoded pixels of all a request's images together; beyond it: 413"
    )
    token_env: str | None = Field(None, description="Env var holding the bearer token; unset: no auth")
    edit_reward: RewardConfig = Field(default_factory=RewardConfig.cme)
    gen_reward: RewardConfig = Field(default_factory=RewardConfig.qma)
