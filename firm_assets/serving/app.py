"""The reward server's FastAPI app: wire format v1 routes in front of the batcher, with auth, limits,
health and metrics. Every refusal is a clear 4xx/5xx JSON `{"detail": ...}`; bad input never 500s."""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from firm_assets.critics.rewards import Reward, RewardConfig, edit_reward, gen_reward
from firm_assets.critics.scoring import CriticScorer, EditQuery, GenQuery, ScoreMode
from firm_assets.serving.batching import Batcher, Kind, Overloaded, Unavailable
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
    RewardConfigOut,
    RewardOverride,
    decode_image,
    edit_result,
    gen_result,
)

# Which reward formulas each endpoint can compute from its two scores.
FORMULAS: dict[Kind, frozenset[str]] = {
    "edit": frozenset({"cme", "execution_only", "naive_sum"}),
    "gen": frozenset({"qma", "execution_only", "naive_sum"}),
}


# Module level: route signatures are resolved against module globals (postponed annotations).
BEARER = HTTPBearer(auto_error=False)


class ErrorBody(BaseModel):
    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "An image is not valid base64 PNG/JPEG",
        401: "Missing or wrong bearer token (only when the server has one)",
        413: "The body or an image is over the server's limits",
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


def create_app(settings: ServerSettings, scorer_factory: Callable[[], CriticScorer]) -> FastAPI:
    """The app; the critic is loaded by the batcher's worker thread once the app starts, and
    `/healthz` says 503 until it is ready."""
    token = bearer_token(settings)
    limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    metrics = ServerMetrics(queue_depth=lambda: batcher.queue_depth())
    batcher = Batcher(
        scorer_factory,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        queue_size=settings.queue_size,
        cross_request=settings.cross_request_batching,
        on_batch=lambda kind, items: metrics.batch_items.labels(kind).observe(items),
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
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    async def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        sent = credentials.credentials if credentials is not None else ""
        if token is None or not secrets.compare_digest(sent.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorize)] if token is not None else []

    async def scored(kind: Kind, mode: ScoreMode, queries: Sequence[Any]) -> list[Any]:
        retry = {"Retry-After": str(settings.retry_after_s)}
        try:
            job = batcher.submit(kind, mode, queries)
        except Overloaded as error:
            raise HTTPException(429, f"server busy: {error}", headers=retry) from None
        except Unavailable as error:
            raise HTTPException(503, str(error), headers=retry) from None
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), settings.request_timeout_s)
        except TimeoutError:
            job.abandoned = True
            raise HTTPException(504, f"not scored within {settings.request_timeout_s} s") from None
        except Unavailable as error:
            raise HTTPException(503, str(error), headers=retry) from None

    async def answer(
        route: Route, body: EditRequest | GenRequest, default: RewardConfig, response: Response
    ) -> EditResponse | GenResponse:
        """The sequence both scoring endpoints share: reward config, image decoding (off the event
        loop), one batcher job, a reward per scored item, and the response with its request id."""
        request_id = body.request_id or uuid.uuid4().hex
        config = reward_config(route.kind, body.reward, default)
        queries = await run_in_threadpool(route.queries, body.items, limits)
        scores = await scored(route.kind, body.mode, queries)
        results = [route.result(s, route.reward(config, s)) for s in scores]
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
        """200 with the critic version once the critic is loaded; 503 while loading or stopping."""
        health = Health(status=batcher.state, critic_version=batcher.critic_version, detail=batcher.detail)
        return JSONResponse(health.model_dump(), status_code=200 if batcher.state == "ok" else 503)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        """Prometheus text: queue depth, batch sizes, request latency, requests by status."""
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


def reward_config(kind: Kind, override: RewardOverride | None, default: RewardConfig) -> RewardConfig:
    """The request's reward config; a formula this endpoint cannot compute or an invalid mix is 422."""
    if override is None:
        return default
    if override.formula is not None and override.formula not in FORMULAS[kind]:
        allowed = ", ".join(sorted(FORMULAS[kind]))
        raise HTTPException(422, f"reward.formula {override.formula!r} is not for /v1/{kind} (use {allowed})")
    try:
        return override.apply(default)
    except ValidationError as error:
        raise HTTPException(422, f"invalid reward config: {error}") from None


def _image(data: str, where: str, limits: ImageLimits) -> Any:
    try:
        return decode_image(data, limits)
    except ImageRejected as error:
        raise HTTPException(error.status, f"{where}: {error}") from None


def edit_queries(items: Sequence[EditItem], limits: ImageLimits) -> list[EditQuery]:
    return [
        EditQuery(
            source=_image(item.source, f"items[{i}].source", limits),
            edited=_image(item.edited, f"items[{i}].edited", limits),
            instruction=item.instruction,
            requirement=item.requirement,
        )
        for i, item in enumerate(items)
    ]


def gen_queries(items: Sequence[GenItem], limits: ImageLimits) -> list[GenQuery]:
    return [
        GenQuery(image=_image(item.image, f"items[{i}].image", limits), prompt=item.prompt)
        for i, item in enumerate(items)
    ]


@dataclass(frozen=True)
class Route:
    """What sets the edit and gen endpoints apart; the sequence they share is `answer` in `create_app`."""

    kind: Kind
    queries: Callable[[Sequence[Any], ImageLimits], list[Any]]
    reward: Callable[[RewardConfig, Any], Reward]
    result: Callable[[Any, Reward], EditResult | GenResult]
    response: type[EditResponse] | type[GenResponse]


EDIT = Route("edit", edit_queries, edit_reward, edit_result, EditResponse)
GEN = Route("gen", gen_queries, gen_reward, gen_result, GenResponse)
