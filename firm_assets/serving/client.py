"""A small client of the reward server for the RL trainer. It retries only what a retry can fix: 429
(queue full) and 503 (critic loading, server restarting) honouring Retry-After, and connection
errors; any other refusal raises RewardServerError with the server's reason."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from firm_assets.critics.scoring import EditQuery, GenQuery, ScoreMode
from firm_assets.serving.wire import (
    EditItem,
    EditRequest,
    EditResponse,
    GenItem,
    GenRequest,
    GenResponse,
    Health,
    RewardOverride,
    encode_image,
)

RETRYABLE = frozenset({429, 503})
# The request did not reach the server or its answer was cut off; scoring is pure, so resending is safe.
# A read timeout is not retried: the server is still working on it, and resending only adds load.
CONNECTION_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)
Model = TypeVar("Model", bound=BaseModel)


class RewardServerError(RuntimeError):
    def __init__(self, status: int | None, detail: Any) -> None:
        super().__init__(f"reward server answered {status}: {detail}" if status else str(detail))
        self.status = status
        self.detail = detail


def retry_delay(response: httpx.Response | None, attempt: int, backoff_s: float, cap_s: float) -> float:
    """Seconds to wait before the next try: the server's Retry-After (in seconds) when it sent one,
    else exponential backoff; never more than cap_s."""
    header = response.headers.get("Retry-After") if response is not None else None
    if header is not None and header.strip().isdigit():
        return min(float(header.strip()), cap_s)
    return min(backoff_s * 2**attempt, cap_s)


class RewardClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 300.0,
        max_retries: int = 8,
        backoff_s: float = 0.5,
        max_delay_s: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_delay_s = max_delay_s
        self.retries = 0  # how many retries this client has made, for logs and tests

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def score_edit(
        self,
        items: Sequence[EditQuery],
        mode: ScoreMode = "expectation",
        reward: RewardOverride | None = None,
        request_id: str | None = None,
    ) -> EditResponse:
        """Scores and rewards of one group of edits, in the order given."""
        wire_items = [
            EditItem(
                source=encode_image(q.source),
                edited=encode_image(q.edited),
                instruction=q.instruction,
                requirement=q.requirement,
            )
            for q in items
        ]
        body = EditRequest(items=wire_items, mode=mode, reward=reward, request_id=request_id)
        return self._post("/v1/edit", body, EditResponse)

    def score_gen(
        self,
        items: Sequence[GenQuery],
        mode: ScoreMode = "expectation",
        reward: RewardOverride | None = None,
        request_id: str | None = None,
    ) -> GenResponse:
        """Scores and rewards of one group of generated images, in the order given."""
        wire_items = [GenItem(image=encode_image(q.image), prompt=q.prompt) for q in items]
        body = GenRequest(items=wire_items, mode=mode, reward=reward, request_id=request_id)
        return self._post("/v1/gen", body, GenResponse)

    def health(self) -> Health:
        """The server's health, whatever its status code (503 while the critic loads)."""
        return Health.model_validate(self._http.get("/healthz").json())

    def _post(self, path: str, body: BaseModel, answer: type[Model]) -> Model:
        payload = body.model_dump(mode="json", exclude_none=True)
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.post(path, json=payload)
            except CONNECTION_ERRORS as error:
                if attempt == self.max_retries:
                    raise RewardServerError(None, f"cannot reach the reward server: {error}") from error
            else:
                if response.status_code == 200:
                    return answer.model_validate(response.json())
                if response.status_code not in RETRYABLE or attempt == self.max_retries:
                    raise RewardServerError(response.status_code, _detail(response))
            time.sleep(retry_delay(response, attempt, self.backoff_s, self.max_delay_s))
            attempt += 1
            self.retries += 1


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except ValueError:
        return response.text
