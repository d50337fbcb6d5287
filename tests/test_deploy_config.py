"""The deployment config in deploy/ validates against the libraries' own schemas: Dagster's instance
schema, dagster-k8s's executor, run launcher and op-tag schemas, dagster-celery's executor schema, the
Kubernetes client's models, the Helm chart's user-deployments schema and the main job's run config
schema. A config that would be refused at deploy time fails here."""

import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import jsonschema_rs
import kubernetes.client
import pytest
import yaml
from dagster import Definitions, define_asset_job, in_process_executor, validate_run_config
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes import class_from_code_pointer
from dagster_celery import celery_executor
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY, get_user_defined_k8s_config
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

from firm_assets.definitions import defs
from firm_assets.executors import executor_from_env, executor_named
from jobs.curation import main_job
from resources.profiles import get_profile

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _yaml(relative: str) -> dict:
    return yaml.safe_load((DEPLOY / relative).read_text())


def _valid(schema, value) -> None:
    result = validate_config(schema, value)
    assert result.success, [error.message for error in result.errors]


# --- instance: dagster.yaml -------------------------------------------------------------------


def test_dagster_yaml_is_a_valid_instance_config(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True
    # dead runs are failed within minutes, and a slow image pull is not mistaken for one
    assert 120 <= monitoring["start_timeout_seconds"] <= 1800
    assert 60 <= monitoring["cancel_timeout_seconds"] <= 900
    assert config["concurrency"]["pools"]["granularity"] == "op"
    launcher = config["run_launcher"]
    assert class_from_code_pointer(launcher["module"], launcher["class"]) is K8sRunLauncher
    _valid(K8sRunLauncher.config_type(), launcher["config"])


def test_an_invalid_instance_config_is_refused(tmp_path: Path) -> None:
    """The check above can fail: a misspelt monitoring key is refused by the same schema."""
    config = _yaml("dagster.yaml")
    config["run_monitoring"]["start_timeout"] = 600
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match="start_timeout"):
        dagster_instance_config(str(tmp_path))


# --- executors ---------------------------------------------------------------------------------


def test_k8s_executor_config_validates_and_names_real_steps() -> None:
    config = _yaml("k8s/executor.yaml")
    _valid(k8s_job_executor.config_schema.config_type, config)
    steps = {node.name for node in defs.resolve_job_def("main").graph.node_defs}
    per_step = config["per_step_k8s_config"]
    assert set(per_step) <= steps, f"per-step config for steps that do not exist: {set(per_step) - steps}"
    for step, entry in per_step.items():
        # the same entry is a valid `dagster-k8s/config` op tag, so it can move onto the asset
        parsed = get_user_defined_k8s_config({USER_DEFINED_K8S_CONFIG_KEY: json.dumps(entry)})
        resources = parsed.container_config["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"], step
        k8s_model_from_dict(kubernetes.client.V1ResourceRequirements, resources)
        k8s_model_from_dict(kubernetes.client.V1PodSpec, {"containers": [], **entry["pod_spec_config"]})
    assert per_step["firm_edit_critic"]["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    k8s_model_from_dict(
        kubernetes.client.V1Container, {"name": "step", **config["step_k8s_config"]["container_config"]}
    )


def test_celery_executor_config_validates() -> None:
    _valid(celery_executor.config_schema.config_type, _yaml("celery/executor.yaml"))


def test_a_wrong_executor_key_is_refused() -> None:
    config = _yaml("k8s/executor.yaml")
    config["per_step_gpu"] = {}
    assert not validate_config(k8s_job_executor.config_schema.config_type, config).success


def test_executor_is_chosen_by_the_environment(tmp_path: Path) -> None:
    assert executor_from_env({}) is in_process_executor
    assert executor_named("k8s") is k8s_job_executor
    assert executor_named("celery") is celery_executor
    with pytest.raises(ValueError, match="known: \\['celery', 'in_process', 'k8s'\\]"):
        executor_named("dask")
    configured = executor_from_env(
        {"FIRM_EXECUTOR": "k8s", "FIRM_EXECUTOR_CONFIG": str(DEPLOY / "k8s" / "executor.yaml")}
    )
    assert configured.name == "k8s"
    bad = tmp_path / "executor.yaml"
    bad.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        executor_from_env({"FIRM_EXECUTOR": "celery", "FIRM_EXECUTOR_CONFIG": str(bad)})


def test_a_job_on_the_k8s_executor_accepts_the_deploy_run_config() -> None:
    """The k8s executor config and the torchrun training config, as one run's config, against the
    real graph's run config schema (assets, resources and executor together)."""
    job = define_asset_job("main_k8s", selection=main_job.selection, executor_def=k8s_job_executor)
    graph = Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=[job], resources=defs.resources
    )
    run_config = {
        **_yaml("run_config/train-torchrun.yaml"),
        "execution": {"config": _yaml("k8s/executor.yaml")},
    }
    validate_run_config(graph.resolve_job_def("main_k8s"), run_config)


# --- Kubernetes objects: Pipes training pod, vLLM servers ----------------------------------------


def test_pipes_training_pod_spec_is_a_pod_spec() -> None:
    pod = _yaml("pipes/training-pod.yaml")
    spec = k8s_model_from_dict(kubernetes.client.V1PodSpec, pod["base_pod_spec"])
    assert spec.containers[0].resources.limits["nvidia.com/gpu"] == "8"
    k8s_model_from_dict(kubernetes.client.V1ObjectMeta, pod["base_pod_meta"])


def _manifests() -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "vllm" / "serve.yaml").read_text()))


def _k8s_object(manifest: dict):
    model = {"Deployment": kubernetes.client.V1Deployment, "Service": kubernetes.client.V1Service}[
        manifest["kind"]
    ]
    return k8s_model_from_dict(model, k8s_snake_case_dict(model, manifest))


def test_vllm_manifests_are_kubernetes_objects_and_match_the_profile() -> None:
    objects = [_k8s_object(manifest) for manifest in _manifests()]
    services = {o.metadata.name: o for o in objects if isinstance(o, kubernetes.client.V1Service)}
    served = {}
    for deployment in (o for o in objects if isinstance(o, kubernetes.client.V1Deployment)):
        (container,) = deployment.spec.template.spec.containers
        args = container.args
        model = args[args.index("--served-model-name") + 1]
        tensor_parallel = int(args[args.index("--tensor-parallel-size") + 1])
        assert container.resources.limits["nvidia.com/gpu"] == str(tensor_parallel)
        served[deployment.metadata.name] = model
    profile = get_profile("k8s-vllm")
    for role in (profile.captioner, profile.judge, profile.planner):
        host = urlparse(role.base_url).hostname
        service = re.match(r"([a-z0-9-]+)\.firm\.svc\.cluster\.local$", host).group(1)
        assert service in services, f"{role.base_url} names no Service"
        assert served[service] == role.model


def test_a_misspelt_kubernetes_field_is_refused() -> None:
    manifest = _manifests()[0]
    manifest["spec"]["replica"] = 2
    with pytest.raises(Exception, match="replica"):
        _k8s_object(manifest)


# --- Helm values ----------------------------------------------------------------------------------


def _schema_without_remote_refs(schema: dict) -> dict:
    """The vendored chart schema with its kubernetesjsonschema.dev references (unreachable offline)
    dropped; the Kubernetes parts are checked with the client's models instead."""
    if isinstance(schema, dict):
        return {
            key: _schema_without_remote_refs(value)
            for key, value in schema.items()
            if not (key == "$ref" and str(value).startswith("http"))
        }
    if isinstance(schema, list):
        return [_schema_without_remote_refs(value) for value in schema]
    return schema


def test_helm_user_deployment_validates_against_the_chart_schema() -> None:
    values = _yaml("helm/values.yaml")
    schema = json.loads((DEPLOY / "helm" / "dagster-user-deployments.values.schema.json").read_text())
    deployment_schema = {
        **_schema_without_remote_refs(schema["definitions"]["UserDeployment"]),
        "definitions": _schema_without_remote_refs(schema["definitions"]),
    }
    validator = jsonschema_rs.validator_for(deployment_schema)
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    validator.validate(deployment)
    assert not validator.is_valid({**deployment, "port": "3030"})
    assert deployment["dagsterApiGrpcArgs"][:2] == ["--module-name", "firm_assets.definitions"]
    k8s_model_from_dict(kubernetes.client.V1ResourceRequirements, deployment["resources"])
    for volume in deployment["volumes"]:
        k8s_model_from_dict(
            kubernetes.client.V1Volume, k8s_snake_case_dict(kubernetes.client.V1Volume, volume)
        )
    env = deployment["env"]
    assert env["FIRM_EXECUTOR"] == "k8s" and env["FIRM_EXECUTOR_CONFIG"].endswith("deploy/k8s/executor.yaml")
    get_profile(env["FIRM_PROFILE"])


def test_helm_run_launcher_and_monitoring_match_the_libraries() -> None:
    """The chart maps runLauncher.config.k8sRunLauncher's camelCase keys onto K8sRunLauncher's
    config and dagsterDaemon.runMonitoring onto the instance's run_monitoring."""
    values = _yaml("helm/values.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"

    def snake(key: str) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()

    launcher_fields = set(K8sRunLauncher.config_type())
    launcher_keys = {snake(key) for key in values["runLauncher"]["config"]["k8sRunLauncher"]}
    assert launcher_keys <= launcher_fields, launcher_keys - launcher_fields
    monitoring = {snake(k): v for k, v in values["dagsterDaemon"]["runMonitoring"].items()}
    assert monitoring == _yaml("dagster.yaml")["run_monitoring"]
