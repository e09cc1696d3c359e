"""Scale-out profile: Dagster on Kubernetes (dagster-k8s), Postgres instance storage, a vLLM teacher fleet.

Files: dagster.yaml (instance), k8s_executor.yaml (run config for k8s_job_executor), vllm-teacher.yaml
(Deployment + Service), tags.py (per-asset `dagster-k8s/config` op tags), definitions.py (the code location
with the k8s executor). docs/scaleout.md explains them; tests/test_scaleout.py validates them.
"""
