"""Answers and efficiency numbers for every model variant on the eval prompts.

Variants: the teacher (through the teacher resource and its call cache), the base student and the merged
student (transformers `generate`, greedy, chat template), each GGUF export (llama.cpp `Llama` in a worker
process, greedy chat completion) and the AWQ export (vLLM, CUDA only). Every local variant is run one request
at a time so latency means the same thing for all of them.

The GGUF worker is a spawned child process: llama.cpp built for another CPU dies with SIGILL, and that must
mark one variant as failed, not kill the whole evaluation. The child also gives a clean peak-RSS number.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from distill_assets.evaluation.metrics import BASE, MERGED, TEACHER, percentile

GEN_COLUMNS = ["example_id", "variant", "category", "response", "latency_s", "prompt_tokens", "completion_tokens",
               "finish_reason", "error"]
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
    """One chat per eval example: the category's system prompt and the eval prompt."""
    items = []
    for r in eval_df.itertuples(index=False):
        cat = categories[r.category]
        messages = ([{"role": "system", "content": cat.system_prompt}] if cat.system_prompt else [])
        messages.append({"role": "user", "content": r.prompt})
        items.append({"example_id": r.eval_id, "category": r.category, "messages": messages})
    return items


# --- discovery ------------------------------------------------------------------------------------------------

def _latest_artifacts(store, asset: str) -> pd.DataFrame:
    if not store.table_exists("artifacts"):
        return pd.DataFrame()
    return store.query_df(
        "SELECT * FROM artifacts WHERE asset = ? ORDER BY created_at DESC", [asset])


def _meta(row: dict) -> dict:
    try:
        return json.loads(row.get("metadata") or "{}") or {}
    except (TypeError, json.JSONDecodeError):
        return {}


def discover_variants(store, *, awq_skip_reason: str | None = None,
                      gguf_kinds: tuple[str, ...] = GGUF_KINDS) -> list[VariantSpec]:
    """The teacher plus every student artifact registered in `artifacts` (latest per asset and kind)."""
    specs = [VariantSpec(TEACHER, "teacher")]
    for asset, name in (("student_base_model", BASE), ("merged_model", MERGED)):
        a = _latest_artifacts(store, asset)
        if a.empty:
            specs.append(VariantSpec(name, "hf", skipped=f"skipped: no {asset} artifact registered"))
        else:
            row = a.iloc[0].to_dict()
            specs.append(VariantSpec(name, "hf", row["path"], row["artifact_id"], metadata={**row, "meta": _meta(row)}))
    merged_id = next((s.artifact_id for s in specs if s.name == MERGED), None)

    def export_spec(name: str, kind: str, row: dict) -> VariantSpec:
        # an export of an older merged model must not be reported as this adapter's export
        parent = row.get("parent_artifact_id")
        stale = (f"skipped: stale export (made from {parent}, not the current merged model {merged_id}); "
                 "rematerialize the export") if parent and merged_id and parent != merged_id else None
        return VariantSpec(name, kind, row["path"], row["artifact_id"], skipped=stale,
                           metadata={**row, "meta": _meta(row)})

    g = _latest_artifacts(store, "gguf_export")
    for kind in gguf_kinds:
        rows = g[g["kind"] == kind] if not g.empty else g
        if not rows.empty:
            specs.append(export_spec(kind, "gguf", rows.iloc[0].to_dict()))
    a = _latest_artifacts(store, "awq_export")
    if a.empty or awq_skip_reason:
        specs.append(VariantSpec("awq", "awq", skipped=awq_skip_reason or "skipped: no awq_export artifact registered"))
    else:
        specs.append(export_spec("awq", "awq", a.iloc[0].to_dict()))
    return specs


def size_on_disk(path: str | None) -> int | None:
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


# --- memory -----------------------------------------------------------------------------------------------------

class PeakMemory:
    """Peak RSS growth of this process while the block runs (sampled every 20 ms), plus CUDA peak when used."""

    def __init__(self, interval_s: float = 0.02):
        import psutil

        self.proc = psutil.Process()
        self.interval_s = interval_s
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cuda_peak: int | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> "PeakMemory":
        self.baseline = self.peak = self.proc.memory_info().rss
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        except Exception:
            pass
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        try:
            import torch

            if torch.cuda.is_available():
                self.cuda_peak = int(torch.cuda.max_memory_allocated())
        except Exception:
            pass

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


# --- generation backends ------------------------------------------------------------------------------------

def generate_teacher(complete: Callable, items: list[dict], max_new_tokens: int) -> pd.DataFrame:
    """Greedy teacher answers through an open `teacher.session(...)`'s `complete(requests, category=...)`."""
    from resources.llm import ChatRequest

    rows = []
    by_cat: dict[str, list[dict]] = {}
    for it in items:
        by_cat.setdefault(it["category"], []).append(it)
    for cat, its in sorted(by_cat.items()):
        reqs = [ChatRequest(messages=it["messages"], temperature=0.0, max_tokens=max_new_tokens, sample_index=0,
                            tag=it["example_id"]) for it in its]
        for it, res in zip(its, complete(reqs, cat)):
            rows.append({"example_id": it["example_id"], "variant": TEACHER, "category": cat,
                         "response": res.content if res.ok else None, "latency_s": float(res.latency_s or 0) or None,
                         "prompt_tokens": int(res.prompt_tokens or 0), "completion_tokens": int(res.completion_tokens or 0),
                         "finish_reason": res.finish_reason, "error": None if res.ok else f"{res.status}: {res.error}"})
    return pd.DataFrame(rows, columns=GEN_COLUMNS)


def generate_hf(model_dir: str, items: list[dict], variant: str, max_new_tokens: int,
                threads: int | None = None, batch_size: int = 8) -> tuple[pd.DataFrame, dict]:
    """Greedy transformers generation with the model's chat template, `batch_size` prompts per generate()
    (left-padded). Each answer's latency is the wall time of its batch: what a caller served in that batch
    waits. batch_size=1 measures one request at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(model_dir)
        tok.padding_side = "left"  # decoder-only: new tokens follow the prompt directly
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32 if device == "cpu" else "auto")
        model.to(device).eval()
        load_s = time.perf_counter() - t0
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        if isinstance(model.generation_config.eos_token_id, int):
            eos.add(model.generation_config.eos_token_id)
        elif model.generation_config.eos_token_id:
            eos.update(model.generation_config.eos_token_id)
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos), 0)
        if tok.pad_token_id is None:
            tok.pad_token_id = pad

        def failed(it: dict, e: Exception) -> dict:
            return {"example_id": it["example_id"], "variant": variant, "category": it["category"],
                    "response": None, "latency_s": None, "prompt_tokens": 0, "completion_tokens": 0,
                    "finish_reason": None, "error": f"{type(e).__name__}: {e}"[:300]}

        def run_batch(batch: list[dict]) -> list[dict]:
            texts = [tok.apply_chat_template(it["messages"], add_generation_prompt=True, tokenize=False)
                     for it in batch]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            width = int(enc["input_ids"].shape[1])
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                     eos_token_id=sorted(eos) or None)
            latency = time.perf_counter() - t
            done = []
            for j, it in enumerate(batch):
                new = out[j, width:].tolist()
                stop = next((k for k, t_ in enumerate(new) if t_ in eos), None)
                if stop is not None:
                    new = new[:stop]  # the EOS and the padding a finished row gets while the batch runs on
                done.append({"example_id": it["example_id"], "variant": variant, "category": it["category"],
                             "response": tok.decode(new, skip_special_tokens=True), "latency_s": latency,
                             "prompt_tokens": int(enc["attention_mask"][j].sum()), "completion_tokens": len(new),
                             "finish_reason": "stop" if stop is not None else "length", "error": None})
            return done

        for b in range(0, len(items), batch_size):
            batch = items[b:b + batch_size]
            try:
                rows.extend(run_batch(batch))
            except Exception:  # one bad prompt (e.g. over the context) must not lose the batch: one at a time
                for it in batch:
                    try:
                        rows.extend(run_batch([it]))
                    except Exception as e:
                        rows.append(failed(it, e))
        del model
    return pd.DataFrame(rows, columns=GEN_COLUMNS), {
        "backend": f"transformers ({device}, batch {batch_size})", "load_s": load_s, "peak_mem_mb": mem.delta_mb,
        "peak_gpu_mem_mb": (mem.cuda_peak / 2**20) if mem.cuda_peak else None}


def _gguf_worker(path: str, items: list[dict], variant: str, max_new_tokens: int, n_ctx: int,
                 threads: int | None) -> tuple[list[dict], dict]:
    import resource

    import psutil

    base_rss = psutil.Process().memory_info().rss
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, seed=0, verbose=False)
    load_s = time.perf_counter() - t0
    rows = []
    for it in items:
        try:
            t = time.perf_counter()
            out = llm.create_chat_completion(messages=it["messages"], temperature=0.0, top_k=1, top_p=1.0,
                                             max_tokens=max_new_tokens, seed=0)
            latency = time.perf_counter() - t
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            rows.append({"example_id": it["example_id"], "variant": variant, "category": it["category"],
                         "response": choice["message"].get("content"), "latency_s": latency,
                         "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                         "completion_tokens": int(usage.get("completion_tokens") or 0),
                         "finish_reason": choice.get("finish_reason"), "error": None})
        except Exception as e:
            rows.append({"example_id": it["example_id"], "variant": variant, "category": it["category"],
                         "response": None, "latency_s": None, "prompt_tokens": 0, "completion_tokens": 0,
                         "finish_reason": None, "error": f"{type(e).__name__}: {e}"[:300]})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return rows, {"backend": "llama.cpp", "load_s": load_s, "peak_mem_mb": max(0, peak - base_rss) / 2**20}


def generate_gguf(path: str, items: list[dict], variant: str, max_new_tokens: int, n_ctx: int = 2048,
                  threads: int | None = None, timeout_s: float | None = None) -> tuple[pd.DataFrame, dict]:
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        fut = pool.submit(_gguf_worker, path, items, variant, max_new_tokens, n_ctx, threads)
        try:
            rows, info = fut.result(timeout=timeout_s)
        except BrokenProcessPool:
            raise RuntimeError("the llama.cpp worker process died (a llama-cpp-python build for another CPU dies "
                               "with SIGILL 'invalid opcode'; install a portable wheel)") from None
    return pd.DataFrame(rows, columns=GEN_COLUMNS), info


def generate_awq(path: str, items: list[dict], variant: str, max_new_tokens: int) -> tuple[pd.DataFrame, dict]:
    """AWQ through vLLM; callers check `awq_unavailable()` first."""
    from vllm import LLM, SamplingParams

    rows = []
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        llm = LLM(model=path, quantization="awq", seed=0)
        load_s = time.perf_counter() - t0
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, seed=0)
        for it in items:
            t = time.perf_counter()
            gen = llm.chat([it["messages"]], params, use_tqdm=False)[0]
            latency = time.perf_counter() - t
            comp = gen.outputs[0]
            rows.append({"example_id": it["example_id"], "variant": variant, "category": it["category"],
                         "response": comp.text, "latency_s": latency, "prompt_tokens": len(gen.prompt_token_ids or []),
                         "completion_tokens": len(comp.token_ids or []), "finish_reason": comp.finish_reason,
                         "error": None})
    return pd.DataFrame(rows, columns=GEN_COLUMNS), {
        "backend": "vllm (awq)", "load_s": load_s, "peak_mem_mb": mem.delta_mb,
        "peak_gpu_mem_mb": (mem.cuda_peak / 2**20) if mem.cuda_peak else None}


def awq_unavailable() -> str | None:
    """Why AWQ cannot run here, or None."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "skipped: needs CUDA"
    except ImportError:
        return "skipped: needs torch with CUDA"
    if importlib.util.find_spec("vllm") is None:
        return "skipped: needs the gpu extra (vllm)"
    return None


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
            else:
                g, info = generate_awq(spec.path, items, spec.name, max_new_tokens)
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
    v = os.environ.get("DISTILL_EVAL_THREADS")
    return int(v) if v else None
