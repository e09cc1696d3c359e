"""Every model variant of the evaluation: discovery from `artifacts`, availability, efficiency numbers, and
`run_variants`, which generates with each runnable one (backends in generate.py).

Variants: the teacher (through the teacher resource and its call cache), the base student and the merged
student (transformers, or llama.cpp from f16 GGUF files: `students_on_llama_cpp`), each GGUF export (llama.cpp
in a worker process) and the AWQ export (vLLM where CUDA and the gpu extra are present, else transformers, which
decompresses the compressed-tensors weights on load).
A variant that cannot run here, or fails, is one efficiency row with its reason, never a silent gap.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distill_assets.lib import conversation as conv
from distill_assets.lib.evaluation.generate import (
    GEN_COLUMNS,
    generate_awq,
    generate_gguf,
    generate_hf,
    generate_teacher,
)
from distill_assets.lib.evaluation.metrics import BASE, MERGED, TEACHER, percentile
from distill_assets.lib.settings import eval_threads

GGUF_KINDS = ("gguf_f16", "gguf_q8_0", "gguf_q4_k_m")


@dataclass
class VariantSpec:
    name: str
    kind: str  # teacher | hf | gguf | awq
    path: str | None = None
    artifact_id: str | None = None
    skipped: str | None = None  # reason, when this variant cannot run here
    metadata: dict = field(default_factory=dict)


def build_items(eval_df: pd.DataFrame, categories: dict[str, Any]) -> list[dict]:
    """One chat per eval example: the category's system prompt and the eval prompt (or conversation), with the
    category's tools. `student_messages` is the plain-text tool form (lib/conversation.py) the exports are asked
    in; the transformers variants render with their own template (lib/chat_template.py), as in training."""
    items = []
    for r in eval_df.itertuples(index=False):
        cat = categories[r.category]
        messages = ([{"role": "system", "content": cat.system_prompt}] if cat.system_prompt else [])
        messages += conv.loads(getattr(r, "messages", None)) or [{"role": "user", "content": r.prompt}]
        tools = cat.tools_json() if getattr(cat, "tools", None) else None
        items.append({"example_id": r.eval_id, "category": r.category, "messages": messages, "tools": tools,
                      "max_new_tokens": cat.max_tokens,
                      "student_messages": conv.plain_text_messages(messages, tools) if tools else messages})
    return items


# --- discovery ------------------------------------------------------------------------------------------------

Found = dict | str  # an artifacts row (metadata parsed), or why there is none ("skipped: ...")


def _spec(name: str, kind: str, row: dict) -> VariantSpec:
    return VariantSpec(name, kind, row["path"], row["artifact_id"], metadata={**row, "meta": row.get("metadata") or {}})


def discover_variants(found: dict[str, Found | dict[str, dict]], *,
                      gguf_kinds: tuple[str, ...] = GGUF_KINDS) -> list[VariantSpec]:
    """The teacher plus the student artifacts eval_report's upstream materializations name: `found` maps
    student_base_model, merged_model and awq_export to an artifacts row (or a skip reason) and gguf_export to
    {quant: row} (or a skip reason). Rows come from the run's own lineage (checks/upstream.py), never from
    "the newest row" of the artifacts table."""
    specs = [VariantSpec(TEACHER, "teacher")]
    for asset, name in (("student_base_model", BASE), ("merged_model", MERGED)):
        row = found.get(asset, f"skipped: no {asset} artifact registered")
        specs.append(VariantSpec(name, "hf", skipped=row) if isinstance(row, str) else _spec(name, "hf", row))
    merged_id = next((s.artifact_id for s in specs if s.name == MERGED), None)

    def export_spec(name: str, kind: str, row: dict) -> VariantSpec:
        # an export of an older merged model must not be reported as this adapter's export
        spec = _spec(name, kind, row)
        parent = row.get("parent_artifact_id")
        if parent and merged_id and parent != merged_id:
            spec.skipped = (f"skipped: stale export (made from {parent}, not the current merged model {merged_id}); "
                            "rematerialize the export")
        return spec

    g = found.get("gguf_export", {})
    if isinstance(g, str):
        specs.extend(VariantSpec(k, "gguf", skipped=g) for k in gguf_kinds)
    else:
        by_kind = {r["kind"]: r for r in g.values()}
        specs.extend(export_spec(k, "gguf", by_kind[k]) for k in gguf_kinds if k in by_kind)
    a = found.get("awq_export", "skipped: no awq_export artifact registered")
    specs.append(VariantSpec("awq", "awq", skipped=a) if isinstance(a, str) else export_spec("awq", "awq", a))
    return specs


def students_on_llama_cpp(specs: list[VariantSpec], found: dict, base_gguf: Callable[[VariantSpec], str | Path],
                          log: Callable[[str], None] = print) -> list[VariantSpec]:
    """The base and merged students answered through llama.cpp instead of transformers, on the backend the GGUF
    exports use and at half the memory of fp32. The merged student runs from its f16 GGUF export, whose agreement
    with the merged weights is the blocking gguf_parity check; the base from an f16 GGUF of its own weights
    (`base_gguf`), so both run at the same precision. A student without such a file stays on transformers and
    the log says why."""
    # the f16 file as discover_variants sees it: missing, skipped, or stale (made from another merged model)
    f16 = next((v for v in discover_variants(found, gguf_kinds=("gguf_f16",)) if v.name == "gguf_f16"), None)
    out = []
    for s in specs:
        if s.kind != "hf" or s.skipped:
            out.append(s)
            continue
        if s.name == MERGED:
            if f16 is None or f16.skipped:
                log(f"variant {s.name}: no f16 GGUF export of this merged model; evaluated with transformers")
                out.append(s)
                continue
            path = f16.path
        else:
            try:
                path = str(base_gguf(s))
            except Exception as e:
                log(f"variant {s.name}: no f16 GGUF ({type(e).__name__}: {e}); evaluated with transformers")
                out.append(s)
                continue
        out.append(replace(s, kind="gguf", path=path))
    return out


def merged_of_adapter(store, adapter_version: str) -> VariantSpec | None:
    """The merged model made from `adapter_version` (named by id, so another adapter's merge is never used)."""
    df = store.query_df("SELECT * FROM artifacts WHERE asset = 'merged_model' AND parent_artifact_id = ? "
                        "ORDER BY created_at DESC LIMIT 1", [adapter_version])
    if df.empty:
        return None
    row = df.iloc[0].to_dict()
    row["metadata"] = json.loads(row["metadata"]) if isinstance(row.get("metadata"), str) else {}
    return _spec(MERGED, "hf", row)


def size_on_disk(path: str | None) -> int | None:
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


def awq_vllm_unavailable() -> str | None:
    """Why the AWQ export cannot be served through vLLM here, or None."""
    try:
        import torch  # deferred: heavy optional dependency

        if not torch.cuda.is_available():
            return "skipped: needs CUDA"
    except ImportError:
        return "skipped: needs torch with CUDA"
    if importlib.util.find_spec("vllm") is None:
        return "skipped: needs the gpu extra (vllm)"
    return None


def awq_unavailable() -> str | None:
    """Why the AWQ export cannot be evaluated here at all, or None: transformers needs compressed-tensors (the
    awq extra) to load it, vLLM needs CUDA."""
    if awq_vllm_unavailable() is None or importlib.util.find_spec("compressed_tensors") is not None:
        return None
    return "skipped: needs the awq extra (compressed-tensors) to load it in transformers, or CUDA + vllm"


def gguf_unavailable() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "skipped: llama-cpp-python is not installed"
    return None


# --- efficiency -------------------------------------------------------------------------------------------------

def teacher_ledger_price(store, prompt_price_per_1m: float = 0.0, completion_price_per_1m: float = 0.0) -> dict:
    """The teacher's $ per 1M tokens from the `teacher_calls` ledger (what was actually paid); when the ledger
    holds no cost (an embedded or free endpoint) the configured prices are used and the source says so."""
    row = store.query_df(
        """SELECT coalesce(sum(cost_usd), 0) AS cost, coalesce(sum(prompt_tokens), 0) AS pt,
                  coalesce(sum(completion_tokens), 0) AS ct, count(*) AS calls
           FROM teacher_calls WHERE role = 'teacher' AND status = 'ok'""").iloc[0]
    tokens = float(row["pt"]) + float(row["ct"])
    if float(row["cost"]) > 0 and tokens > 0:
        per_1m = float(row["cost"]) / tokens * 1e6
        return {"usd_per_1m_tokens": per_1m, "source": f"ledger ({int(row['calls'])} calls, ${float(row['cost']):.4f})",
                "ledger_cost_usd": float(row["cost"]), "ledger_tokens": tokens}
    if tokens > 0 and (prompt_price_per_1m or completion_price_per_1m):
        blended = (float(row["pt"]) * prompt_price_per_1m + float(row["ct"]) * completion_price_per_1m) / tokens
        return {"usd_per_1m_tokens": blended, "source": "configured price, weighted by ledger token mix",
                "ledger_cost_usd": 0.0, "ledger_tokens": tokens}
    return {"usd_per_1m_tokens": completion_price_per_1m or prompt_price_per_1m or 0.0,
            "source": "configured price (no priced calls in the ledger)", "ledger_cost_usd": 0.0,
            "ledger_tokens": tokens}


def efficiency_row(variant: str, gens: pd.DataFrame, info: dict, *, size_bytes: int | None,
                   usd_per_hour: float | None, teacher_usd_per_1m: float | None) -> dict:
    """Latency p50/p95, generated tokens/s, peak memory, size and $ per 1M generated tokens for one variant.
    Local variants: cost = hardware $/hour / (tokens/s * 3600) * 1e6."""
    ok = gens[gens["error"].isna() & gens["latency_s"].notna()] if not gens.empty else gens
    lat = ok["latency_s"].astype(float) if not ok.empty else pd.Series(dtype=float)
    tokens = float(ok["completion_tokens"].sum()) if not ok.empty else 0.0
    tps = tokens / float(lat.sum()) if len(lat) and float(lat.sum()) > 0 else float("nan")
    if variant == TEACHER:
        cost = teacher_usd_per_1m
    elif usd_per_hour is not None and tps and not math.isnan(tps):
        cost = usd_per_hour / (tps * 3600) * 1e6
    else:
        cost = float("nan")
    ratio = (cost / teacher_usd_per_1m) if (teacher_usd_per_1m and cost is not None and not math.isnan(cost)
                                             and variant != TEACHER) else float("nan")
    return {
        "variant": variant, "status": "ok", "reason": None, "backend": info.get("backend"),
        "requests": int(len(gens)), "errors": int(gens["error"].notna().sum()) if not gens.empty else 0,
        "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
        "tokens_per_s": tps, "peak_mem_mb": info.get("peak_mem_mb"), "peak_gpu_mem_mb": info.get("peak_gpu_mem_mb"),
        "load_s": info.get("load_s"), "size_bytes": size_bytes, "usd_per_1m_tokens": cost,
        "cost_vs_teacher": ratio,
    }


def skipped_row(variant: str, reason: str) -> dict:
    return {"variant": variant, "status": "skipped" if reason.startswith("skipped") else "failed", "reason": reason,
            "backend": None, "requests": 0, "errors": 0, "latency_p50_s": np.nan, "latency_p95_s": np.nan,
            "tokens_per_s": np.nan, "peak_mem_mb": np.nan, "peak_gpu_mem_mb": np.nan, "load_s": np.nan,
            "size_bytes": None, "usd_per_1m_tokens": np.nan, "cost_vs_teacher": np.nan}


def run_variants(specs: list[VariantSpec], items: list[dict], *, max_new_tokens: int,
                 teacher_complete: Callable | None, teacher_price: dict, usd_per_hour: float,
                 threads: int | None = None, gguf_n_ctx: int = 2048, gguf_timeout_s: float | None = None,
                 hf_batch_size: int = 8, log: Callable[[str], None] = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate with every runnable variant; returns (generations, efficiency). A variant that cannot run
    here or fails is one efficiency row with its reason, never a silent gap."""
    gens, eff = [], []
    for spec in specs:
        reason = spec.skipped
        if reason is None and spec.kind == "gguf":
            reason = gguf_unavailable()
        if reason is None and spec.kind == "awq":
            reason = awq_unavailable()
        if reason is None and spec.kind == "teacher" and teacher_complete is None:
            reason = "skipped: no teacher session"
        if reason is not None:
            log(f"variant {spec.name}: {reason}")
            eff.append(skipped_row(spec.name, reason if reason.startswith("skipped") else f"skipped: {reason}"))
            continue
        try:
            t0 = time.perf_counter()
            if spec.kind == "teacher":
                g, info = generate_teacher(teacher_complete, items, max_new_tokens), {"backend": "teacher endpoint"}
            elif spec.kind == "hf":
                g, info = generate_hf(spec.path, items, spec.name, max_new_tokens, threads, hf_batch_size)
            elif spec.kind == "gguf":
                g, info = generate_gguf(spec.path, items, spec.name, max_new_tokens, gguf_n_ctx, threads,
                                        gguf_timeout_s)
            elif awq_vllm_unavailable() is None:
                g, info = generate_awq(spec.path, items, spec.name, max_new_tokens)
            else:
                log(f"variant {spec.name}: vLLM {awq_vllm_unavailable()}; evaluated with transformers "
                    "(compressed-tensors weights decompressed on load)")
                g, info = generate_hf(spec.path, items, spec.name, max_new_tokens, threads, hf_batch_size)
                info = {**info, "backend": f"{info['backend']}, compressed-tensors decompressed"}
            log(f"variant {spec.name}: {len(g)} answers in {time.perf_counter() - t0:.1f}s")
        except Exception as e:
            log(f"variant {spec.name} failed: {type(e).__name__}: {e}")
            eff.append(skipped_row(spec.name, f"failed: {type(e).__name__}: {e}"[:400]))
            continue
        gens.append(g)
        eff.append(efficiency_row(spec.name, g, info, size_bytes=size_on_disk(spec.path),
                                  usd_per_hour=None if spec.kind == "teacher" else usd_per_hour,
                                  teacher_usd_per_1m=teacher_price.get("usd_per_1m_tokens")))
    gen_df = pd.concat(gens, ignore_index=True) if gens else pd.DataFrame(columns=GEN_COLUMNS)
    return gen_df, pd.DataFrame(eff)


def default_threads() -> int | None:
    """CPU threads for local variants when the run config sets none (DISTILL_EVAL_THREADS)."""
    return eval_threads()


def adapter_version_of(spec: VariantSpec | None) -> str:
    """The merged model's adapter: its metadata's adapter_version, else its parent artifact, else itself."""
    if spec is None or spec.artifact_id is None:
        return "unversioned"
    meta = spec.metadata.get("meta") or {}
    return str(meta.get("adapter_version") or spec.metadata.get("parent_artifact_id") or spec.artifact_id)
