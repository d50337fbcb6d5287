"""The automation conditions, evaluated by Dagster on a real instance: a downstream asset is requested
after its upstream updates, and not while the upstream's blocking check fails."""

from dagster import (
    AssetCheckResult,
    AssetSelection,
    Config,
    DefaultSensorStatus,
    asset,
    asset_check,
    evaluate_automation_conditions,
    instance_for_test,
    materialize,
)

from firm_assets.automation import CRITIC_CONDITION, automation_sensor
from firm_assets.definitions import defs


class RawConfig(Config):
    value: int = 1


@asset
def raw(config: RawConfig) -> int:
    return config.value


@asset
def dataset(raw: int) -> int:
    return raw


@asset_check(asset=dataset, blocking=True)
def dataset_positive(dataset: int) -> AssetCheckResult:
    return AssetCheckResult(passed=dataset > 0)


@asset(automation_condition=CRITIC_CONDITION)
def critic(dataset: int) -> int:
    return dataset * 2


def _upstream(instance, value: int) -> None:
    """Materialize raw and dataset (and its blocking check) with `raw` = value."""
    materialize(
        [raw, dataset, dataset_positive],
        instance=instance,
        run_config={"ops": {"raw": {"config": {"value": value}}}},
        raise_on_error=False,
    )


def test_downstream_is_requested_after_upstream_updates_and_gated_by_blocking_checks() -> None:
    graph = [raw, dataset, dataset_positive, critic]
    with instance_for_test() as instance:
        tick = evaluate_automation_conditions(defs=graph, instance=instance)
        assert tick.total_requested == 0  # its upstream is missing

        _upstream(instance, 1)
        tick = evaluate_automation_conditions(defs=graph, instance=instance, cursor=tick.cursor)
        assert tick.get_requested_partitions(critic.key) == {None}

        materialize([raw, dataset, critic], instance=instance)
        tick = evaluate_automation_conditions(defs=graph, instance=instance, cursor=tick.cursor)
        tick = evaluate_automation_conditions(defs=graph, instance=instance, cursor=tick.cursor)
        assert tick.total_requested == 0  # nothing new upstream

        _upstream(instance, -1)  # dataset updated, its blocking check failed: no retraining
        tick = evaluate_automation_conditions(defs=graph, instance=instance, cursor=tick.cursor)
        assert tick.total_requested == 0

        _upstream(instance, 3)  # updated again and checked: retrain
        tick = evaluate_automation_conditions(defs=graph, instance=instance, cursor=tick.cursor)
        assert tick.get_requested_partitions(critic.key) == {None}


def test_real_graph_conditions_and_sensor_default_stopped() -> None:
    graph = defs.resolve_asset_graph()
    labels = {
        key.to_user_string(): graph.get(key).automation_condition.get_label()
        for key in graph.get_all_asset_keys()
        if graph.get(key).automation_condition
    }
    assert labels["firm_edit_dataset"] == "curate_on_checked_upstream"
    assert labels["firm_edit_critic"] == labels["firm_gen_critic"] == "retrain_critic_on_checked_dataset"
    assert labels["bench_results"] == "bench_on_new_critic_or_items"
    assert labels["edit_rl_policy"] == "retrain_policy_on_checked_critic"
    # roots read files or config: the sensors, not conditions, notice their changes
    assert not {"edit_requests", "gen_prompts", "firm_bench_edit", "edit_inbox_requests"} & labels.keys()
    assert automation_sensor.default_status == DefaultSensorStatus.STOPPED
    assert automation_sensor.asset_selection == AssetSelection.all()


def test_real_graph_requests_nothing_on_an_empty_instance() -> None:
    """On a fresh instance every root is missing, so no condition fires until data arrives."""
    with instance_for_test() as instance:
        assert evaluate_automation_conditions(defs=defs, instance=instance).total_requested == 0
