"""When assets update on their own, and how many model stages run at once.

The conditions are named constants so the asset specs (and their snapshot) say which rule each asset
follows. All are Dagster's `eager` (an upstream updated, nothing upstream missing or in progress)
gated by the upstream assets' blocking checks: a dataset, critic, bench or policy never rebuilds on
an input whose blocking check failed (scores out of range, too many failures, an empty dataset).
They act only while `firm_automation` (a sensor, stopped by default) is switched on.
"""

from dagster import AssetSelection, AutomationCondition, AutomationConditionSensorDefinition

# The concurrency pool of every asset that loads a model; its limit (dagster.yaml or
# `dagster instance concurrency set gpu N`) caps how many such steps run at once on one instance.
GPU_POOL = "gpu"


def _after_checked_upstream(label: str) -> AutomationCondition:
    """Eager, and only once every direct upstream's blocking checks passed (or run in the same tick)."""
    return (AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed()).with_label(
        label
    )


CURATION_CONDITION = _after_checked_upstream("curate_on_checked_upstream")
CRITIC_CONDITION = _after_checked_upstream("retrain_critic_on_checked_dataset")
BENCH_CONDITION = _after_checked_upstream("bench_on_new_critic_or_items")
POLICY_CONDITION = _after_checked_upstream("retrain_policy_on_checked_critic")

automation_sensor = AutomationConditionSensorDefinition(
    "firm_automation",
    target=AssetSelection.all(),
    description="Evaluates the assets' automation conditions (firm_assets/automation.py); stopped by "
    "default so nothing runs unasked.",
)
