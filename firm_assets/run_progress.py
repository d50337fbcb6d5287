"""The compact view `firm run` prints while a job runs: one line per finished step (assets, rows,
cache hits, model calls, model seconds, elapsed) and, while a stage reports progress, how far it is
and, once enough of it is done to tell, when it should end; the warnings the assets log and, for a
failed step, the error that failed it (one line, no traceback). Dagster's own event stream stays in
its console logger, shown under `-v`."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import EventLogEntry

# A stage reports progress by logging this message (`progress_message`); the view parses it back.
PROGRESS = re.compile(r"^progress (?P<done>\d+)/(?P<total>\d+) (?P<unit>[\w ]+)$")
COUNTED = ("rows", "cache_hits", "model_calls", "model_seconds")


def progress_message(done: int, total: int, unit: str) -> str:
    """What a stage logs (context.log.info) to say it has done `done` of `total` units of work."""
    return f"progress {done}/{total} {unit}"


# a stage reports after each tenth of its work, at its next finished unit once this long has passed
# since its last report, and always at the end
REPORT_EVERY_S = 30.0


def report_due(done: int, total: int, last_done: int, since_last_s: float, every_s: float) -> bool:
    """Whether progress is worth a message: the work is finished, another tenth of it is done since
    the last message, or `every_s` seconds have passed since then with something new done (so the
    first finished unit always reports). A stage of thousands of calls logs about a dozen messages
    plus one per `every_s`, yet a short one reports each batch."""
    if done <= last_done:
        return False
    return done >= total or 10 * (done - last_done) >= total or since_last_s >= every_s


@dataclass
class ProgressReporter:
    """Counts a stage's finished units and logs `progress_message` through `log` when `report_due`
    says so. `total` is the work this step does (a resumed training run: the updates left), since
    the view's ETA is that count's rate over the step's elapsed time."""

    total: int
    unit: str
    log: Callable[[str], None]
    every_s: float = REPORT_EVERY_S
    clock: Callable[[], float] = time.monotonic
    done: int = field(default=0, init=False)
    _last_done: int = field(default=0, init=False)
    _last_at: float = field(default=-math.inf, init=False)

    def advance(self, n: int = 1) -> None:
        """Counts finished units and logs progress when a report is due."""
        self.done += n
        now = self.clock()
        if report_due(self.done, self.total, self._last_done, now - self._last_at, self.every_s):
            self.log(progress_message(min(self.done, self.total), self.total, self.unit))
            self._last_done, self._last_at = self.done, now


def console_log_level(verbose: bool) -> str:
    """Dagster's console logger shows its DEBUG event stream only when asked; otherwise nothing but
    a critical error, since the view itself prints the assets' warnings and each failed step's error."""
    return "DEBUG" if verbose else "CRITICAL"


def with_console_level(run_config: Mapping[str, Any], verbose: bool) -> dict[str, Any]:
    """The run config with the console logger's level set, unless the config sets loggers itself."""
    if "loggers" in run_config:
        return dict(run_config)
    return {**run_config, "loggers": {"console": {"config": {"log_level": console_log_level(verbose)}}}}


# An ETA is shown once this share of a stage's work is done since its first report.
ETA_AFTER_FRACTION = 0.1


def eta_seconds(done: int, total: int, first_done: int, since_first_s: float) -> float | None:
    """Seconds left at the mean rate since the stage's first report (`first_done` units done then,
    `since_first_s` ago). Measured from that report, not the step's start, so loading the model and
    the first batch do not inflate it; averaged over everything since, so one slow batch does not
    swing it. None until a tenth of the work is done since that report (too little to tell), and
    when nothing is left."""
    progressed = done - first_done
    if total <= done or progressed <= 0 or since_first_s <= 0 or progressed < ETA_AFTER_FRACTION * total:
        return None
    return since_first_s * (total - done) / progressed


def metadata_totals(metadata: Mapping[str, Any]) -> dict[str, float]:
    """Each counted figure of one materialization's metadata: `rows` as recorded; the model figures
    summed over the keys that are the figure's name or end with `_<name>` (a stage-prefixed count
    such as `planner_model_calls`)."""
    totals: dict[str, float] = {}
    for name in COUNTED:
        values = [
            getattr(value, "value", value)
            for key, value in metadata.items()
            if key == name or (name != "rows" and key.endswith(f"_{name}"))
        ]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if numbers:
            totals[name] = sum(numbers)
    return totals


def _figure(name: str, value: float) -> str:
    return f"{name}={value:.1f}" if name == "model_seconds" else f"{name}={int(value)}"


@dataclass(frozen=True)
class _Series:
    """A stage's first progress report in a step (a step may run several stages one after the other,
    such as a score stage and its canary): its total, what was done then, and when."""

    total: int
    first_done: int
    first_at: float


@dataclass
class _Step:
    started: float
    assets: list[str] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=dict)
    series: _Series | None = None
    last_done: int = 0


def failure_reason(error: Any) -> str:
    """The innermost cause of a step's failure (Dagster wraps the asset's exception) as one line,
    `Class: message`: what went wrong, without the traceback (`-v` shows that)."""
    while error.cause is not None:
        error = error.cause
    lines = [line for line in (error.message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else error.cls_name or "unknown error"


@dataclass
class ProgressView:
    """An instance event listener for one run (`instance.add_event_listener(run_id, view)`); prints
    each line through `write` as the events arrive."""

    write: Callable[[str], None] = print
    clock: Callable[[], float] = time.time
    steps: dict[str, _Step] = field(default_factory=dict)

    def __call__(self, entry: EventLogEntry) -> None:
        event = entry.dagster_event
        key = entry.step_key or ""
        if event is None:
            if entry.level >= logging.WARNING:
                self.write(f"  {key:28} {logging.getLevelName(entry.level).lower()}: {entry.user_message}")
            else:
                self._progress(key, entry.user_message, entry.timestamp)
        elif event.is_step_start:
            self.steps[key] = _Step(started=entry.timestamp)
        elif event.is_step_materialization:
            materialization = event.step_materialization_data.materialization
            step = self.steps.setdefault(key, _Step(started=entry.timestamp))
            step.assets.append(materialization.asset_key.to_user_string())
            for name, value in metadata_totals(materialization.metadata).items():
                step.totals[name] = step.totals.get(name, 0) + value
        elif event.is_step_success or event.is_step_failure:
            step = self.steps.pop(key, _Step(started=entry.timestamp))
            if not step.assets and event.is_step_success:
                return  # a check's own step: the summary lists every check's verdict
            self.write(self.step_line(key, step, entry.timestamp - step.started, event.is_step_failure))
            if event.is_step_failure and event.step_failure_data.error is not None:
                self.write(f"    {failure_reason(event.step_failure_data.error)}")

    def _progress(self, key: str, message: str, now: float) -> None:
        match = PROGRESS.match(message)
        if not match or key not in self.steps:
            return
        done, total = int(match["done"]), int(match["total"])
        step = self.steps[key]
        series = step.series
        if series is None or series.total != total or done < step.last_done:  # another stage began
            series = step.series = _Series(total, done, now)
        step.last_done = done
        eta = eta_seconds(done, total, series.first_done, now - series.first_at)
        self.write(
            f"  {key:28} {done}/{total} {match['unit']}" + ("" if eta is None else f"  ETA {eta:.0f}s")
        )

    @staticmethod
    def step_line(key: str, step: _Step, elapsed_s: float, failed: bool) -> str:
        """`  <step>  <assets>  rows=.. cache_hits=.. model_calls=.. model_seconds=..  <elapsed>s`."""
        assets = ",".join(a for a in step.assets if a != key)
        figures = " ".join(_figure(name, step.totals[name]) for name in COUNTED if name in step.totals)
        verdict = "  FAILED" if failed else ""
        return "  ".join(part for part in (f"  {key:28}", assets, figures) if part) + (
            f"  {elapsed_s:.1f}s{verdict}"
        )
