"""Cross-request dynamic batching in front of one critic.

One worker thread owns the CriticScorer (one model load per server process, and the scorer is only
ever called from that thread). Requests wait in a bounded queue while the worker scores; when it
frees, it takes every waiting request of the oldest one's kind and score mode, up to `max_batch`
items (continuous batching). An under-full batch then waits for more a fixed fraction of what a
batch has been measured to cost (capped at `max_wait_s`): closed-loop clients answered together
send their next requests a few milliseconds apart, and a fixed wait shorter than that spread split
them into alternating batches of 1 and 31. A full queue refuses new requests (429), a loading or
stopping worker refuses them too (503), each with a Retry-After estimated from the measured load
and batch times; a request is never split.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from firm_assets.critics import scoring

Kind = Literal["edit", "gen"]
State = Literal["loading", "ok", "failed", "stopping"]


class Overloaded(Exception):
    """The queue is full: the client should retry after a pause (HTTP 429)."""


class Unavailable(Exception):
    """The critic is loading, failed to load, or the server is stopping (HTTP 503)."""


@dataclass
class Job:
    """One request's queries, waiting for the worker; `future` lives on the server's event loop."""

    kind: Kind
    mode: scoring.ScoreMode
    queries: Sequence[scoring.EditQuery] | Sequence[scoring.GenQuery]
    future: asyncio.Future[list[Any]]
    loop: asyncio.AbstractEventLoop
    abandoned: bool = False  # the request timed out: skip it if it has not started yet
    queued_at: float = field(default_factory=time.monotonic)


def failed_scores(kind: Kind, count: int, reason: str) -> list[scoring.EditScores] | list[scoring.GenScores]:
    """Per-item failures for queries the critic could not score, so their rewards are masked."""
    failure = scoring.DimensionScore(score=None, failure=reason)
    if kind == "edit":
        return [scoring.EditScores(execution=failure, consistency=failure) for _ in range(count)]
    return [scoring.GenScores(instruction=failure, quality=failure) for _ in range(count)]


class Batcher:
    """The queue and the worker thread; `submit` is called from the event loop, everything else that
    touches the scorer runs on the worker."""

    def __init__(
        self,
        scorer_factory: Callable[[], scoring.CriticScorer],
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        cross_request: bool = True,
        on_batch: Callable[[Kind, int], None] | None = None,
        wait_fraction: float = 0.1,
        expected_load_s: float = 60.0,
        on_loaded: Callable[[float], None] | None = None,
    ) -> None:
        self._factory = scorer_factory
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.wait_fraction = wait_fraction
        self.queue_size = queue_size
        self.cross_request = cross_request
        self.expected_load_s = expected_load_s
        self._on_batch = on_batch
        self._on_loaded = on_loaded
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._load_started = time.monotonic()
        self.state: State = "loading"
        self.detail: str | None = None
        self.critic_version: str | None = None
        self.pixel_budget: int | None = None  # the critic's pixels per image; larger images are shrunk
        self.batch_seconds: float | None = None  # moving average of a critic batch's wall time

    def batch_wait_s(self) -> float:
        """How long an under-full batch waits for more requests: a fraction of a batch's cost."""
        if self.batch_seconds is None:
            return 0.0
        return min(self.max_wait_s, self.wait_fraction * self.batch_seconds)

    def retry_after_s(self, least: int) -> int:
        """Seconds a refused client should wait: what is left of the expected load while loading, the
        queue's expected drain time when it is full, else `least`."""
        with self._cond:
            if self.state == "loading":
                left = self.expected_load_s - (time.monotonic() - self._load_started)
                return max(least, math.ceil(left))
            if self.state == "ok" and self.batch_seconds is not None:
                waiting = sum(len(job.queries) for job in self._queue)
                return max(least, math.ceil(self.batch_seconds * (waiting / self.max_batch + 1)))
            return least

    def start(self) -> None:
        """Starts the worker thread that loads the critic and serves batches."""
        self._load_started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="critic-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, let the worker finish its current batch, answer the rest with 503."""
        with self._cond:
            self.state = "stopping"
            left, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        for job in left:
            _settle(job, error=Unavailable("the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout_s)

    def queue_depth(self) -> int:
        """Items waiting, for the metrics and for back-pressure."""
        with self._cond:
            return len(self._queue)

    def submit(self, kind: Kind, mode: scoring.ScoreMode, queries: Sequence[Any]) -> Job:
        """Queue one request's queries; raises Unavailable or Overloaded instead of queueing."""
        loop = asyncio.get_running_loop()
        job = Job(kind=kind, mode=mode, queries=queries, future=loop.create_future(), loop=loop)
        with self._cond:
            if self.state != "ok":
                raise Unavailable(self.unavailable_reason())
            if len(self._queue) >= self.queue_size:
                raise Overloaded(f"{len(self._queue)} requests are waiting (queue size {self.queue_size})")
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def unavailable_reason(self) -> str:
        """Why the server cannot score now, for the 503 answer."""
        if self.state == "loading":
            return "the critic is still loading"
        if self.state == "failed":
            return f"the critic failed to load: {self.detail}"
        return "the server is shutting down"

    def _run(self) -> None:
        try:
            scorer = self._factory()
        except Exception as error:
            with self._cond:
                self.state, self.detail = "failed", f"{type(error).__name__}: {error}"
            traceback.print_exc()
            return
        loaded_s = time.monotonic() - self._load_started
        if self._on_loaded is not None:
            self._on_loaded(loaded_s)
        with self._cond:
            self.critic_version = scorer.critic_version
            self.pixel_budget = pixel_budget(scorer)
            if self.state == "loading":
                self.state = "ok"
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._score(scorer, batch)

    def _next_batch(self) -> list[Job] | None:
        """The oldest live job plus every compatible waiting job up to max_batch items; an under-full
        batch then waits `batch_wait_s` for more."""
        with self._cond:
            while True:
                if self.state == "stopping":
                    return None
                while self._queue and self._queue[0].abandoned:
                    self._queue.popleft()
                if self._queue:
                    break
                self._cond.wait()
            batch = [self._queue.popleft()]
            if not self.cross_request:
                return batch
            size = len(batch[0].queries)
            deadline = time.monotonic() + self.batch_wait_s()
            while True:
                for job in list(self._queue):
                    fits = size + len(job.queries) <= self.max_batch
                    if fits and not job.abandoned and (job.kind, job.mode) == (batch[0].kind, batch[0].mode):
                        self._queue.remove(job)
                        batch.append(job)
                        size += len(job.queries)
                left = deadline - time.monotonic()
                if size >= self.max_batch or left <= 0 or self.state == "stopping":
                    return batch
                self._cond.wait(left)

    def _score(self, scorer: scoring.CriticScorer, batch: list[Job]) -> None:
        """Score a batch in one critic call; if the call raises, score each request alone so one bad
        request cannot fail the others, and turn a request that still raises into per-item failures."""
        if self._on_batch is not None:
            self._on_batch(batch[0].kind, sum(len(job.queries) for job in batch))
        started = time.monotonic()
        try:
            results = _call(scorer, batch[0].kind, batch[0].mode, [q for job in batch for q in job.queries])
            took = time.monotonic() - started
            self.batch_seconds = took if self.batch_seconds is None else (self.batch_seconds + took) / 2
        except Exception:
            if len(batch) > 1:
                for job in batch:
                    self._score(scorer, [job])
                return
            (job,) = batch
            reason = f"critic error: {traceback.format_exc(limit=0).strip()}"
            results = failed_scores(job.kind, len(job.queries), reason)
        start = 0
        for job in batch:
            _settle(job, result=results[start : start + len(job.queries)])
            start += len(job.queries)


def pixel_budget(scorer: Any) -> int | None:
    """The most pixels the critic's image processor keeps of an image (Qwen-VL processors name it
    `size.longest_edge`, in pixels, or `max_pixels`); None when the scorer has no such processor."""
    processor = getattr(getattr(getattr(scorer, "backend", None), "processor", None), "image_processor", None)
    size = getattr(processor, "size", None)
    budget = getattr(size, "longest_edge", None) or (
        size.get("longest_edge") if isinstance(size, dict) else None
    )
    budget = budget or getattr(processor, "max_pixels", None)
    return int(budget) if budget else None


def _call(scorer: scoring.CriticScorer, kind: Kind, mode: scoring.ScoreMode, queries: list[Any]) -> list[Any]:
    results = scorer.score_edit(queries, mode) if kind == "edit" else scorer.score_gen(queries, mode)
    if len(results) != len(queries):
        raise RuntimeError(f"the critic returned {len(results)} results for {len(queries)} queries")
    return list(results)


def _settle(job: Job, result: list[Any] | None = None, error: Exception | None = None) -> None:
    """Hand a result or an error to the waiting request on its event loop (a no-op once it gave up)."""

    def resolve() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result or [])

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(resolve)
