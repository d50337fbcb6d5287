"""A small client of the reward server for the RL trainer. It retries only what a retry can fix: 429
(queue full) and 503 (critic loading, server restarting), waiting what the server's Retry-After
says, and connection errors (the server is down or restarting), with backoff; it keeps trying until
a total deadline per call (default 15 minutes: a restarted server may take minutes to load its
critic, and an RL run should wait for it rather than die). Any other refusal raises
RewardServerError with the server's reason."""

from __future__ import annotations

import time
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from firm_assets.critics.scoring import EditQuery, GenQuery
from firm_assets.serving.wire import (
    EditItem,
    EditRequest,
    EditResponse,
    GenItem,
    GenRequest,
    GenResponse,
    Health,
    encode_image,
)

DEFAULT_DEADLINE_S = 900.0

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
    """The reward server refused or failed a request; carries its status and detail."""

    def __init__(self, status: int | None, detail: Any) -> None:
        super().__init__(f"reward server answered {status}: {detail}" if status else str(detail))
        self.status = status
        self.detail = detail


def retry_delay(
    response: httpx.Response | None, attempt: int, backoff_s: float, max_backoff_s: float
) -> float:
    """Seconds to wait before the next try: the server's Retry-After (in seconds) when it sent one
    (the caller cuts it to what is left of its deadline), else exponential backoff up to
    max_backoff_s."""
    header = response.headers.get("Retry-After") if response is not None else None
    if header is not None and header.strip().isdigit():
        return float(header.strip())
    return min(backoff_s * 2**attempt, max_backoff_s)


class RewardClient:
    """Talks to a reward server, so trainers can score over HTTP."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 300.0,
        deadline_s: float = DEFAULT_DEADLINE_S,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        connections: int = 16,
    ) -> None:
        """timeout_s bounds one HTTP exchange; deadline_s bounds a call with all its retries (an
        exchange is cut to what is left of it)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, limits=limits
        )
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.retries = 0  # how many retries this client has made, for logs and tests

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the HTTP connection pool."""
        self._http.close()

    def edit(self, body: EditRequest) -> EditResponse:
        """Sends one editing request and returns the server's validated answer."""
        return self._post("/v1/edit", body, EditResponse)

    def gen(self, body: GenRequest) -> GenResponse:
        """Sends one generation request and returns the server's validated answer."""
        return self._post("/v1/gen", body, GenResponse)

    def health(self) -> Health:
        """The server's health, whatever its status code (503 while the critic loads)."""
        return Health.model_validate(self._http.get("/healthz").json())

    def _post(self, path: str, body: BaseModel, answer: type[Model]) -> Model:
        payload = body.model_dump(mode="json", exclude_none=True)
        deadline = time.monotonic() + self.deadline_s
        attempt = 0
        while True:
            response: httpx.Response | None = None
            exchange_s = min(self.timeout_s, max(deadline - time.monotonic(), 0.001))
            try:
                response = self._http.post(path, json=payload, timeout=exchange_s)
            except httpx.ReadTimeout as error:  # not resent (above); cut short, it ends the call
                cut = f" (gave up after {self.deadline_s:g} s)" if exchange_s < self.timeout_s else ""
                raise RewardServerError(None, f"no answer in {exchange_s:.3g} s{cut}") from error
            except CONNECTION_ERRORS as error:
                failure = RewardServerError(None, f"cannot reach the reward server: {error}")
            else:
                if response.status_code == 200:
                    return answer.model_validate(response.json())
                failure = RewardServerError(response.status_code, _detail(response))
                if response.status_code not in RETRYABLE:
                    raise failure
            left = deadline - time.monotonic()
            if left <= 0:
                raise RewardServerError(
                    failure.status, f"{failure.detail} (gave up after {self.deadline_s:g} s)"
                )
            time.sleep(min(retry_delay(response, attempt, self.backoff_s, self.max_backoff_s), left))
            attempt += 1
            self.retries += 1


def edit_item(query: EditQuery) -> EditItem:
    """An editing query in wire form."""
    return EditItem(
        source=encode_image(query.source),
        edited=encode_image(query.edited),
        instruction=query.instruction,
        requirement=query.requirement,
    )


def gen_item(query: GenQuery) -> GenItem:
    """A generation query in wire form."""
    return GenItem(image=encode_image(query.image), prompt=query.prompt)


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except ValueError:
        return response.text
