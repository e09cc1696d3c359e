"""The scale-out profile's files, validated against Dagster's and Kubernetes' own schemas (no cluster needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

dagster_k8s = pytest.importorskip("dagster_k8s", reason="the scaleout extra is not installed (pip install -e .[scaleout])")
pytest.importorskip("dagster_postgres", reason="the scaleout extra is not installed (pip install -e .[scaleout])")

import dagster as dg  # noqa: E402
from dagster._config import process_config, validate_config  # noqa: E402
from dagster._core.instance.config import dagster_instance_config  # noqa: E402
from dagster._serdes.config_class import class_from_code_pointer  # noqa: E402
from dagster_k8s.job import UserDefinedDagsterK8sConfig  # noqa: E402
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict  # noqa: E402

SCALEOUT = Path(__file__).resolve().parents[2] / "distill_assets" / "scaleout"
PG_ENV = {"DAGSTER_PG_HOST": "postgres.distill.svc", "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": "x"}


def _errors(result) -> str:
    return "; ".join(e.message for e in result.errors or [])


@pytest.fixture
def instance_dir(tmp_path, monkeypatch):
    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    shutil.copy(SCALEOUT / "dagster.yaml", tmp_path / "dagster.yaml")
    return tmp_path


def test_instance_yaml_passes_dagsters_instance_schema(instance_dir):
    # The same loader `DagsterInstance.get()` uses: schema, storage/run_queue conflicts, concurrency rules.
    config, custom_class = dagster_instance_config(str(instance_dir))
    assert custom_class is None
    assert config["telemetry"]["enabled"] is False
    assert "postgres" in config["storage"]
    assert config["run_launcher"]["class"] == "K8sRunLauncher"


def test_instance_yaml_pluggable_classes_accept_their_config(instance_dir):
    raw = yaml.safe_load((instance_dir / "dagster.yaml").read_text())
    # The run launcher: its class's own config schema, env vars resolved like at startup.
    rl = raw["run_launcher"]
    cls = class_from_code_pointer(rl["module"], rl["class"])
    assert cls is dagster_k8s.K8sRunLauncher
    result = process_config(cls.config_type(), rl["config"])
    assert result.success, _errors(result)
    # Postgres storage: the schema of dagster_postgres' storage class, with the password read from the env.
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    pg = raw["storage"]["postgres"]
    for storage in (PostgresRunStorage, PostgresEventLogStorage, PostgresScheduleStorage):
        result = process_config(storage.config_type(), pg)
        assert result.success, f"{storage.__name__}: {_errors(result)}"
        assert result.value["postgres_db"]["password"] == PG_ENV["DAGSTER_PG_PASSWORD"]
    # the URL it builds names a driver SQLAlchemy has here (psycopg2, installed with dagster-postgres)
    import sqlalchemy
    from dagster_postgres.utils import pg_url_from_config

    url = pg_url_from_config(result.value)
    assert url.startswith("postgresql+psycopg2://dagster:x@postgres.distill.svc:5432/dagster")
    assert sqlalchemy.engine.make_url(url).get_dialect().driver == "psycopg2"
    # Per-run pod resources: valid Kubernetes ResourceRequirements.
    run_cfg = UserDefinedDagsterK8sConfig.from_dict(rl["config"]["run_k8s_config"])
    from kubernetes.client import V1ResourceRequirements

    k8s_model_from_dict(V1ResourceRequirements, run_cfg.container_config["resources"])


def test_instance_yaml_rejects_a_typo(tmp_path):
    # The validation above is real: the same loader refuses a misspelt key.
    bad = yaml.safe_load((SCALEOUT / "dagster.yaml").read_text())
    bad["run_launcher"]["config"]["job_namespac"] = bad["run_launcher"]["config"].pop("job_namespace")
    cls = class_from_code_pointer(bad["run_launcher"]["module"], bad["run_launcher"]["class"])
    assert not validate_config(cls.config_type(), bad["run_launcher"]["config"]).success
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({**bad, "telemetry": {"enabld": False}}))
    with pytest.raises(dg.DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def _executor_run_config() -> dict:
    return yaml.safe_load((SCALEOUT / "k8s_executor.yaml").read_text())


def test_k8s_executor_run_config_is_valid_for_a_job_on_k8s_job_executor():
    from dagster_k8s import k8s_job_executor

    cfg = _executor_run_config()
    result = validate_config(k8s_job_executor.config_schema.config_type, cfg["execution"]["config"])
    assert result.success, _errors(result)

    # The whole run config, as a launch would submit it, for a job that runs on k8s_job_executor.
    @dg.asset
    def lora_adapter():
        return 1

    job = dg.define_asset_job("j", selection=[lora_adapter], executor_def=k8s_job_executor)
    resolved = dg.Definitions(assets=[lora_adapter], jobs=[job]).resolve_job_def("j")
    assert dg.validate_run_config(resolved, cfg)


def test_gpu_steps_request_gpus_on_gpu_nodes():
    from kubernetes.client import V1Container, V1PodSpec

    per_step = _executor_run_config()["execution"]["config"]["per_step_k8s_config"]
    assert {"lora_adapter", "merged_model", "awq_export", "raw_generations"} <= set(per_step)
    for step, raw in per_step.items():
        cfg = UserDefinedDagsterK8sConfig.from_dict(raw)
        res = cfg.container_config["resources"]
        assert res["limits"]["nvidia.com/gpu"] == "1", step
        assert cfg.pod_spec_config["node_selector"], step
        assert any(t["key"] == "nvidia.com/gpu" for t in cfg.pod_spec_config["tolerations"]), step
        # Real Kubernetes models: misspelt fields raise here.
        k8s_model_from_dict(V1PodSpec, {**cfg.pod_spec_config, "containers": [{"name": "step"}]})
        k8s_model_from_dict(V1Container, {**cfg.container_config, "name": "step"})


def test_tags_module_matches_the_yaml_and_is_a_valid_op_tag(monkeypatch):
    from distill_assets.scaleout import tags

    monkeypatch.setenv("TEACHER_BACKEND", "vllm")
    per_step = _executor_run_config()["execution"]["config"]["per_step_k8s_config"]
    assert tags.per_step_k8s_config() == per_step, "k8s_executor.yaml is stale: regenerate it from tags.py"
    for profile in tags.profiles():
        op_tags = tags.k8s_op_tags(profile)
        UserDefinedDagsterK8sConfig.from_dict(op_tags[tags.K8S_CONFIG_TAG])

        # Accepted by Dagster as op tags, and read back by dagster-k8s the way the executor reads them.
        @dg.asset(name=f"a_{profile}", op_tags=op_tags)
        def a():
            return 1

        from dagster_k8s.job import get_user_defined_k8s_config

        node = a.op
        got = get_user_defined_k8s_config(node.tags)
        assert got.container_config == op_tags[tags.K8S_CONFIG_TAG]["container_config"]

    monkeypatch.delenv("TEACHER_BACKEND")
    # With a remote teacher fleet generation is a CPU pod.
    assert "nvidia.com/gpu" not in str(tags.per_step_k8s_config()["raw_generations"])
    monkeypatch.setenv("DISTILL_K8S_GPU_NODE_SELECTOR", '{"cloud.google.com/gke-accelerator": "nvidia-l4"}')
    assert tags.k8s_config("training")["pod_spec_config"]["node_selector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4"}
    with pytest.raises(ValueError, match="unknown k8s profile"):
        tags.k8s_config("tpu")


def test_vllm_fleet_manifests_are_valid_kubernetes_objects():
    from kubernetes.client import V1ConfigMap, V1Deployment, V1Service

    docs = [d for d in yaml.safe_load_all((SCALEOUT / "vllm-teacher.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service", "ConfigMap"}
    models = {"Deployment": V1Deployment, "Service": V1Service, "ConfigMap": V1ConfigMap}
    for kind, doc in kinds.items():
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
        k8s_model_from_dict(models[kind], k8s_snake_case_dict(models[kind], body))
    dep, svc, env = kinds["Deployment"], kinds["Service"], kinds["ConfigMap"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert "--served-model-name=teacher" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    # TEACHER_BASE_URL names that Service and port, and TEACHER_MODEL the served model name.
    port = svc["spec"]["ports"][0]["port"]
    assert env["data"]["TEACHER_BASE_URL"] == f"http://{svc['metadata']['name']}.distill.svc.cluster.local:{port}/v1"
    assert env["data"]["TEACHER_MODEL"] == "teacher"


def test_scaleout_code_location_runs_on_k8s_job_executor(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path))
    import importlib

    mod = importlib.import_module("distill_assets.scaleout.definitions")
    job = mod.defs().resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "k8s"
    cfg = mod.executor_config()
    from dagster_k8s import k8s_job_executor

    assert validate_config(k8s_job_executor.config_schema.config_type, cfg).success
