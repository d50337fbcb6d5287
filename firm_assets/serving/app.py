"""The reward server's FastAPI app: wire format v1 routes in front of the batcher, with auth, limits,
health and metrics. Every refusal is a clear 4xx/5xx JSON `{"detail": ...}`; bad input never 500s,
and what goes wrong with one item (an image that does not decode, a critic answer that fails, a
reward that cannot be formed) is that item's masked result with its reason, never the request's."""

from __future__ import annotations

import asyncio
import math
import os
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from PIL import Image
from pydantic import BaseModel, ValidationError

from firm_assets.critics.rewards import Reward, RewardConfig, edit_reward, gen_reward
from firm_assets.critics.scoring import CriticScorer, EditQuery, GenQuery, ScoreMode
from firm_assets.serving.auth import BearerMiddleware
from firm_assets.serving.batching import Batcher, Kind, Overloaded, Unavailable, failed_scores
from firm_assets.serving.metrics import MetricsMiddleware, ServerMetrics
from firm_assets.serving.payload import BodyLimitMiddleware
from firm_assets.serving.settings import ServerSettings
from firm_assets.serving.wire import (
    WIRE_VERSION,
    EditItem,
    EditRequest,
    EditResponse,
    EditResult,
    GenItem,
    GenRequest,
    GenResponse,
    GenResult,
    Health,
    ImageLimits,
    ImageRejected,
    Limits,
    ProbedImage,
    RewardConfigOut,
    RewardOverride,
    edit_result,
    gen_result,
    load_image,
    probe_image,
)

# Declares the bearer scheme in the OpenAPI schema; `BearerMiddleware` enforces it before the body is read.
BEARER = HTTPBearer(auto_error=False)


class ErrorBody(BaseModel):
    """The error shape every non-2xx answer has, for the OpenAPI schema."""

    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "The body is not UTF-8 JSON",
        401: "Missing or wrong bearer token (only when the server has one)",
        413: "The body, the item count, an image or the request's pixels are over the server's limits",
        422: "The body does not match the schema (mode, reward config, item fields)",
        429: "The queue is full; retry after Retry-After seconds",
        503: "The critic is loading or the server is stopping; retry after Retry-After seconds",
        504: "Not scored within the server's request timeout",
    }.items()
}


def bearer_token(settings: ServerSettings) -> str | None:
    """The token clients must send, read from the env var the settings name (None: no auth)."""
    if settings.token_env is None:
        return None
    token = os.environ.get(settings.token_env, "")
    if not token:
        raise ValueError(f"token env var {settings.token_env} is unset or empty")
    return token


def create_app(
    settings: ServerSettings,
    scorer_factory: Callable[[], CriticScorer],
    on_loaded: Callable[[float], None] | None = None,
) -> FastAPI:
    """The app; the critic is loaded by the batcher's worker thread once the app starts, and
    `/healthz` says 503 until it is ready (`on_loaded` gets the seconds the load took)."""
    token = bearer_token(settings)
    limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    # what a client must respect: the settings of the same names
    advertised = Limits(**settings.model_dump(include=set(Limits.model_fields)))
    metrics = ServerMetrics(queue_depth=lambda: batcher.queue_depth())
    batcher = Batcher(
        scorer_factory,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        queue_size=settings.queue_size,
        cross_request=settings.cross_request_batching,
        on_batch=lambda kind, items: metrics.batch_items.labels(kind).observe(items),
        wait_fraction=settings.batch_wait_fraction,
        expected_load_s=settings.expected_load_s,
        on_loaded=on_loaded,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(
        title="firm reward server",
        version=str(WIRE_VERSION),
        description="FIRM critic scores and CME/QMA rewards for RL rollouts (wire format v1).",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.add_exception_handler(RequestValidationError, unprocessable)
    # Starlette runs the last added middleware first: metrics, then the token, then the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if token is not None:
        app.add_middleware(BearerMiddleware, token=token, paths=("/v1/",))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    guarded = [Depends(BEARER)] if token is not None else []

    def retry() -> dict[str, str]:
        return {"Retry-After": str(batcher.retry_after_s(settings.retry_after_s))}

    async def scored(kind: Kind, mode: ScoreMode, queries: Sequence[Any]) -> list[Any]:
        if not queries:
            return []
        try:
            job = batcher.submit(kind, mode, queries)
        except Overloaded as error:
            raise HTTPException(429, f"server busy: {error}", headers=retry()) from None
        except Unavailable as error:
            raise HTTPException(503, str(error), headers=retry()) from None
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), settings.request_timeout_s)
        except TimeoutError:
            job.abandoned = True
            raise HTTPException(504, f"not scored within {settings.request_timeout_s} s") from None
        except Unavailable as error:
            raise HTTPException(503, str(error), headers=retry()) from None

    async def answer(
        route: Route, body: EditRequest | GenRequest, default: RewardConfig, response: Response
    ) -> EditResponse | GenResponse:
        """The sequence both scoring endpoints share: reward config, image checks and decoding (off
        the event loop), one batcher job for the items whose images decoded, a reward per item, and
        the response with its request id."""
        if len(body.items) > settings.max_items:
            count = len(body.items)
            raise HTTPException(413, f"request has {count} items, the limit is {settings.max_items}")
        if batcher.state != "ok":  # before decoding: a loading or stopping server refuses cheaply
            raise HTTPException(503, batcher.unavailable_reason(), headers=retry())
        request_id = body.request_id or uuid.uuid4().hex
        config = reward_config(body.reward, default)
        prepared = await run_in_threadpool(
            prepare, route, body.items, limits, settings.max_request_pixels, batcher.pixel_budget
        )
        queries = [p for p in prepared if not isinstance(p, str)]
        scored_items = iter(await scored(route.kind, body.mode, queries))
        scores = [
            failed_scores(route.kind, 1, p)[0] if isinstance(p, str) else next(scored_items) for p in prepared
        ]
        results = [route.result(s, item_reward(route, config, s)) for s in scores]
        metrics.item_failures.labels(route.kind).inc(sum(r.reward.masked for r in results))
        response.headers["X-Request-ID"] = request_id
        return route.response(
            request_id=request_id,
            critic_version=batcher.critic_version or "",
            mode=body.mode,
            reward_config=RewardConfigOut(**config.model_dump()),
            results=results,
        )

    @app.post("/v1/edit", response_model=EditResponse, responses=ERRORS, dependencies=guarded)
    async def edit(body: EditRequest, response: Response) -> EditResponse:
        """Execution and consistency of each edit (one critic batch) and its reward (CME by default)."""
        return await answer(EDIT, body, settings.edit_reward, response)

    @app.post("/v1/gen", response_model=GenResponse, responses=ERRORS, dependencies=guarded)
    async def gen(body: GenRequest, response: Response) -> GenResponse:
        """Instruction following and quality of each image and its reward (QMA by default)."""
        return await answer(GEN, body, settings.gen_reward, response)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """200 with the critic version once the critic is loaded; 503 while loading or stopping. Both
        carry the request limits, so a client can split a step into requests the server accepts."""
        health = Health(
            status=batcher.state,
            critic_version=batcher.critic_version,
            detail=batcher.detail,
            limits=advertised,
        )
        ready = batcher.state == "ok"
        headers = {} if ready else {"Retry-After": str(batcher.retry_after_s(settings.retry_after_s))}
        return JSONResponse(health.model_dump(), status_code=200 if ready else 503, headers=headers)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        """Prometheus text: queue depth, batch sizes, request latency, requests by status."""
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


def reward_config(override: RewardOverride | None, default: RewardConfig) -> RewardConfig:
    """The request's reward config (the wire models already refused a formula the endpoint cannot
    compute); an invalid mix is 422."""
    if override is None:
        return default
    try:
        return override.apply(default)
    except ValidationError as error:
        raise HTTPException(422, f"invalid reward config: {error}") from None


def unprocessable(_: Request, error: Exception) -> JSONResponse:
    """422 with pydantic's errors, non-finite numbers written as text: a body holding NaN or Infinity
    (Python's JSON reader accepts them) is refused, not turned into a 500 by the JSON writer."""
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": _finite(jsonable_encoder(error.errors()))}, status_code=422)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def prepare(
    route: Route, items: Sequence[Any], limits: ImageLimits, max_request_pixels: int, budget: int | None
) -> list[Any]:
    """Each item's critic query, or the reason its images do not decode. Every image's header is
    checked first, so a request over a limit (per image or summed) is a 413 before any pixel is
    decoded; decoded images are shrunk to the critic's pixel budget."""
    probed: list[dict[str, ProbedImage] | str] = []
    for index, item in enumerate(items):
        images: dict[str, ProbedImage] = {}
        for name, data in route.images(item).items():
            try:
                images[name] = probe_image(data, limits)
            except ImageRejected as error:
                if error.status == 413:
                    raise HTTPException(413, f"items[{index}].{name}: {error}") from None
                probed.append(f"items[{index}].{name}: {error}")
                break
        else:
            probed.append(images)
    total = sum(image.pixels for images in probed if not isinstance(images, str) for image in images.values())
    if total > max_request_pixels:
        raise HTTPException(413, f"request images hold {total} pixels, the limit is {max_request_pixels}")
    prepared: list[Any] = []
    for index, (item, images) in enumerate(zip(items, probed, strict=True)):
        if isinstance(images, str):
            prepared.append(images)
            continue
        try:
            prepared.append(route.query(item, {name: load_image(p, budget) for name, p in images.items()}))
        except ImageRejected as error:
            if error.status == 413:
                raise HTTPException(413, f"items[{index}]: {error}") from None
            prepared.append(f"items[{index}]: {error}")
    return prepared


def item_reward(route: Route, config: RewardConfig, scores: Any) -> Reward:
    """The item's reward; a reward that cannot be formed masks that item with the reason."""
    try:
        return route.reward(config, scores)
    except Exception:
        reason = f"reward error: {traceback.format_exc(limit=0).strip()}"
        return Reward(value=None, masked=True, reason=reason)


def edit_images(item: EditItem) -> Mapping[str, str]:
    """The encoded images of an editing item, for decoding and checking."""
    return {"source": item.source, "edited": item.edited}


def edit_query(item: EditItem, images: Mapping[str, Image.Image]) -> EditQuery:
    """Builds the critic's editing query from the item and its decoded images."""
    return EditQuery(images["source"], images["edited"], item.instruction, item.requirement)


def gen_images(item: GenItem) -> Mapping[str, str]:
    """The encoded image of a generation item, for decoding and checking."""
    return {"image": item.image}


def gen_query(item: GenItem, images: Mapping[str, Image.Image]) -> GenQuery:
    """Builds the critic's generation query from the item and its decoded image."""
    return GenQuery(image=images["image"], prompt=item.prompt)


@dataclass(frozen=True)
class Route:
    """What sets the edit and gen endpoints apart; the sequence they share is `answer` in `create_app`."""

    kind: Kind
    images: Callable[[Any], Mapping[str, str]]
    query: Callable[[Any, Mapping[str, Image.Image]], Any]
    reward: Callable[[RewardConfig, Any], Reward]
    result: Callable[[Any, Reward], EditResult | GenResult]
    response: type[EditResponse] | type[GenResponse]


EDIT = Route("edit", edit_images, edit_query, edit_reward, edit_result, EditResponse)
GEN = Route("gen", gen_images, gen_query, gen_reward, gen_result, GenResponse)
