"""The distill code location for Kubernetes: the project's Definitions plus `k8s_job_executor`.

Point the Helm chart's user deployment (or a workspace.yaml) at this module instead of
`distill_assets.definitions`:

    dagster-user-deployments:
      deployments:
        - name: distill
          image: {repository: registry.example.com/distill, tag: "0.1.0"}
          dagsterApiGrpcArgs: ["-m", "distill_assets.scaleout.definitions", "-a", "defs"]

Every step then runs in its own pod; the GPU steps get the node selectors, tolerations and `nvidia.com/gpu`
resources of distill_assets/scaleout/tags.py through `per_step_k8s_config`, so no asset module has to change.
The executor is `configured` from k8s_executor.yaml when the code location loads: change the file (or the env it
reads), not the Launchpad, to change it.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml
from dagster_k8s import k8s_job_executor

from distill_assets.definitions import defs as base_defs  # lazy (@dg.definitions): loads the defs/ folder
from distill_assets.scaleout.tags import k8s_config, per_step_k8s_config

EXECUTOR_YAML = Path(__file__).with_name("k8s_executor.yaml")


def executor_config(base: dg.Definitions | None = None) -> dict:
    """k8s_executor.yaml's execution config, with per_step_k8s_config recomputed for this deployment's env
    (TEACHER_BACKEND decides whether generation needs a GPU) and restricted to steps that exist."""
    base = base or base_defs()
    cfg = dict(yaml.safe_load(EXECUTOR_YAML.read_text())["execution"]["config"])
    steps = [k.to_python_identifier() for k in base.resolve_asset_graph().get_all_asset_keys()]
    cfg["per_step_k8s_config"] = per_step_k8s_config(steps)
    cfg.setdefault("step_k8s_config", k8s_config("cpu"))
    return cfg


@dg.definitions
def defs() -> dg.Definitions:
    base = base_defs()
    return dg.Definitions.merge(base, dg.Definitions(executor=k8s_job_executor.configured(executor_config(base))))
