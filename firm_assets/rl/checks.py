"""Reward-hacking gates (warn): a policy whose images drift darker or duller, or whose training critic
drifts away from its held-out judge, is flagged even though its reward went up. Each rule compares
the mean of the first DRIFT_WINDOW steps with the mean of the last ones."""

from dataclasses import dataclass
from typing import Literal

import polars as pl
from dagster import AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, AssetsDefinition, asset_check

from firm_assets.rl.assets import edit_rl_policy, gen_rl_policy
from firm_assets.rl.critic_reward import DIVERGENCE
from resources.warehouse_resource import WarehouseResource

DRIFT_WINDOW = 3  # steps averaged at each end (fewer when the run is short)
NEAR_BLACK_RISE = 0.2  # fraction of near-black pixels may rise by at most this much
BRIGHTNESS_SHIFT = 0.15  # mean brightness on [0, 1] may move by at most this much either way
SATURATION_SHIFT = 0.15  # mean saturation on [0, 1] likewise
ENTROPY_DROP = 0.3  # colour entropy may lose at most this fraction of its starting value
DIVERGENCE_RISE = 0.25  # training critic vs held-out judge gap on [0, 1] may grow by at most this


@dataclass(frozen=True)
class DriftRule:
    """A limit on how far one monitored metric may move during RL."""

    metric: str
    kind: Literal["rise", "shift", "relative_drop"]
    limit: float


RULES = (
    DriftRule("near_black_fraction", "rise", NEAR_BLACK_RISE),
    DriftRule("brightness", "shift", BRIGHTNESS_SHIFT),
    DriftRule("saturation", "shift", SATURATION_SHIFT),
    DriftRule("colour_entropy", "relative_drop", ENTROPY_DROP),
    DriftRule(DIVERGENCE, "rise", DIVERGENCE_RISE),
)


def end_means(values: list[float]) -> tuple[float, float]:
    """Means of the first and last window of a series (window: DRIFT_WINDOW, at most half of it)."""
    window = max(1, min(DRIFT_WINDOW, len(values) // 2))
    return sum(values[:window]) / window, sum(values[-window:]) / window


def drift(rule: DriftRule, values: list[float]) -> float:
    """How far the series moved in the rule's sense: rise (last - first), shift |last - first|, or
    relative drop ((first - last) / first)."""
    first, last = end_means(values)
    if rule.kind == "rise":
        return last - first
    if rule.kind == "shift":
        return abs(last - first)
    return (first - last) / first if first > 0 else 0.0


def drift_failures(history: pl.DataFrame) -> tuple[list[str], dict[str, float]]:
    """Rules broken by a (step, metric, value) history, as reasons, and each rule's drift. A monitor
    with no values at all breaks its rule too: a check that cannot look must not pass."""
    failures, drifts = [], {}
    for rule in RULES:
        values = history.filter(pl.col("metric") == rule.metric).sort("step")["value"].to_list()
        if not values:
            failures.append(f"{rule.metric}: no values recorded")
            continue
        drifts[rule.metric] = drift(rule, values)
        if drifts[rule.metric] > rule.limit:
            failures.append(f"{rule.metric}: {rule.kind} {drifts[rule.metric]:.3f} > {rule.limit}")
    return failures, drifts


def monitor_history(warehouse: WarehouseResource, policy: pl.DataFrame) -> pl.DataFrame:
    """The monitored metrics this policy version logged, step by step."""
    row = policy.row(0, named=True)
    return warehouse.get().query(
        "SELECT step, metric, value FROM policy_monitors WHERE policy = ? AND version = ? ORDER BY step",
        [row["policy"], row["version"]],
    )


def _result(history: pl.DataFrame) -> AssetCheckResult:
    failures, drifts = drift_failures(history)
    return AssetCheckResult(
        passed=not failures,
        severity=AssetCheckSeverity.WARN,
        description="; ".join(failures) or "monitors within thresholds",
        metadata={"steps": history["step"].n_unique(), **{f"drift_{k}": v for k, v in drifts.items()}},
    )


def monitor_drift_check(policy: AssetsDefinition, which: str) -> AssetChecksDefinition:
    """`monitor_drift` (warn) on a policy asset: its monitors show no reward hacking or collapse."""

    @asset_check(
        asset=policy,
        name="monitor_drift",
        description=f"Image statistics and critic divergence of the {which} policy stayed within thresholds.",
    )
    def _check(warehouse: WarehouseResource, frame: pl.DataFrame) -> AssetCheckResult:
        return _result(monitor_history(warehouse, frame))

    return _check


edit_rl_policy_monitor_drift = monitor_drift_check(edit_rl_policy, "editing")
gen_rl_policy_monitor_drift = monitor_drift_check(gen_rl_policy, "generation")
