"""Per-step Kubernetes settings for the steps that need a GPU, as `dagster-k8s/config` op tags.

Asset owners attach them with `op_tags=k8s_op_tags("training")` on `@dg.asset`; without dagster-k8s in the
deployment the tag is inert (the in-process and multiprocess executors ignore it), so the local quickstart is
unaffected. The same dicts feed `per_step_k8s_config` in definitions.py, which covers the GPU steps by name
today without touching the asset modules.

Node selection follows NVIDIA's GPU Operator / GPU feature discovery label `nvidia.com/gpu.present`; override
it per cluster with DISTILL_K8S_GPU_NODE_SELECTOR='{"cloud.google.com/gke-accelerator": "nvidia-l4"}' (JSON).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from distill_assets.lib.settings import k8s_gpu_node_selector_raw, teacher_backend

K8S_CONFIG_TAG = "dagster-k8s/config"

GPU_TOLERATIONS = [
    # Taint that GPU node pools carry on GKE/EKS/AKS so that CPU pods are not scheduled there.
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
]


def gpu_node_selector() -> dict[str, str]:
    raw = k8s_gpu_node_selector_raw()
    if raw:
        value = json.loads(raw)
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError("DISTILL_K8S_GPU_NODE_SELECTOR must be a JSON object of string labels")
        return value
    return {"nvidia.com/gpu.present": "true"}


def _gpu(gpus: int, cpu: str, memory: str, shm: str | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "container_config": {
            "resources": {
                "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)},
                "limits": {"memory": memory, "nvidia.com/gpu": str(gpus)},
            },
        },
        "pod_spec_config": {
            "node_selector": gpu_node_selector(),
            "tolerations": copy.deepcopy(GPU_TOLERATIONS),
        },
        "pod_template_spec_metadata": {"labels": {"distill/gpu": "true"}},
    }
    if shm:
        # PyTorch data loaders and NCCL use /dev/shm; the container default (64 MiB) is too small.
        cfg["pod_spec_config"]["volumes"] = [{"name": "dshm", "empty_dir": {"medium": "Memory", "size_limit": shm}}]
        cfg["container_config"]["volume_mounts"] = [{"name": "dshm", "mount_path": "/dev/shm"}]
    return cfg


def profiles() -> dict[str, dict[str, Any]]:
    """Named `dagster-k8s/config` values."""
    return {
        # In-process vLLM generation (TEACHER_BACKEND=vllm); with a remote fleet, generation needs no GPU.
        "generation": _gpu(1, cpu="4", memory="32Gi", shm="8Gi"),
        # LoRA/QLoRA SFT and the merge: one GPU, enough host memory to hold the merged fp32 copy.
        "training": _gpu(1, cpu="8", memory="64Gi", shm="16Gi"),
        # llm-compressor AWQ calibration + quantization (runs on CPU too; a GPU makes the grid search fast).
        "awq": _gpu(1, cpu="4", memory="48Gi", shm="8Gi"),
        # Everything else: small CPU pods.
        "cpu": {"container_config": {"resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                                                   "limits": {"memory": "4Gi"}}}},
    }


def k8s_config(profile: str) -> dict[str, Any]:
    try:
        return profiles()[profile]
    except KeyError:
        raise ValueError(f"unknown k8s profile {profile!r}; one of {sorted(profiles())}") from None


GPU_OP_TAG = "distill/gpu"


def k8s_op_tags(profile: str) -> dict[str, Any]:
    """`op_tags=` value for `@dg.asset`: e.g. `op_tags=k8s_op_tags("training")`.

    GPU profiles also carry the `distill/gpu` op tag, which k8s_executor.yaml's tag_concurrency_limits count.
    """
    tags: dict[str, Any] = {K8S_CONFIG_TAG: k8s_config(profile)}
    if profile != "cpu":
        tags[GPU_OP_TAG] = "true"
    return tags


# Which step runs on which profile (step key == asset name for single-asset ops).
STEP_PROFILES: dict[str, str] = {
    "raw_generations": "generation",
    "lora_adapter": "training",
    "merged_model": "training",
    "awq_export": "awq",
}


def step_profiles() -> dict[str, str]:
    """STEP_PROFILES for this deployment: generation needs a GPU only with the in-process vLLM backend."""
    out = dict(STEP_PROFILES)
    if teacher_backend() != "vllm":
        out["raw_generations"] = "cpu"  # a remote teacher fleet (TEACHER_BASE_URL) does the GPU work
    return out


def per_step_k8s_config(step_keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """`per_step_k8s_config` for k8s_job_executor, restricted to the steps that exist (when given)."""
    prof = step_profiles()
    keys = prof if step_keys is None else {k: v for k, v in prof.items() if k in step_keys}
    return {step: k8s_config(profile) for step, profile in keys.items()}
