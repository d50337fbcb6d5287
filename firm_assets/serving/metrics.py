"""Prometheus metrics of the reward server, in a registry of its own (one per app, so two servers in
one process do not share series), and the ASGI middleware that times and counts API requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
Metric = TypeVar("Metric", Counter, Histogram)


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        depth = Gauge("firm_reward_queue_depth", "Requests waiting for the critic", registry=self.registry)
        depth.set_function(queue_depth)
        self.batch_items = self._by_endpoint(
            Histogram, "firm_reward_batch_items", "Items per critic batch", buckets=BATCH_BUCKETS
        )
        self.latency = self._by_endpoint(
            Histogram,
            "firm_reward_request_seconds",
            "Time from request received to response sent",
            buckets=LATENCY_BUCKETS,
        )
        self.requests = self._by_endpoint(
            Counter, "firm_reward_requests", "API requests by final HTTP status", "status"
        )
        self.item_failures = self._by_endpoint(
            Counter,
            "firm_reward_item_failures",
            "Items whose reward was masked because a critic answer failed",
        )

    def _by_endpoint(
        self, kind: type[Metric], name: str, documentation: str, *labels: str, **options: Any
    ) -> Metric:
        """A metric in this server's registry whose series are split by endpoint (edit, gen, other) first."""
        return kind(name, documentation, ["endpoint", *labels], registry=self.registry, **options)

    def render(self) -> bytes:
        """The metrics in Prometheus text format, for /metrics."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times and counts every request to the scoring API (`/v1/...`), whatever its status, including
    the ones refused before they reach a route (413, 401)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        endpoint = path.removeprefix("/v1/") if path in ("/v1/edit", "/v1/gen") else "other"
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, str(status)).inc()
