"""The rule every content-watching sensor follows: the first tick records, a change runs once."""

from __future__ import annotations

from dagster import RunRequest, SensorEvaluationContext, SkipReason


def on_content_change(
    context: SensorEvaluationContext, digest: str, what: str, tag: str, **request: object
) -> RunRequest | SkipReason:
    """A run request when `digest` differs from the cursor, keyed by the transition (so A -> B -> A
    runs again). With no cursor yet (a sensor just switched on) the digest is only recorded: the
    current state is the baseline, not a change."""
    previous = context.cursor
    if previous == digest:
        return SkipReason(f"{what} unchanged")
    context.update_cursor(digest)
    if previous is None:
        return SkipReason(f"first tick: recorded the {what}'s current content ({digest[:12]}); no run")
    return RunRequest(run_key=f"{previous}->{digest}", tags={tag: digest}, **request)
