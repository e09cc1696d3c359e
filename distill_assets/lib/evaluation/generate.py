"""Answer generation for each backend, greedy, with latency and peak memory.

Every local variant is run the same way so latency means the same thing for all of them: transformers in
batches (`batch_size=1` measures one request at a time), llama.cpp and vLLM one request at a time.

The GGUF worker is a spawned child process: llama.cpp built for another CPU dies with SIGILL, and that must
mark one variant as failed, not kill the whole evaluation. The child also gives a clean peak-RSS number.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pandas as pd
import psutil

from distill_assets.lib.chat_template import render
from distill_assets.lib.conversation import message_text
from distill_assets.lib.evaluation.metrics import TEACHER
from resources.llm import ChatRequest

GEN_COLUMNS = ["example_id", "variant", "category", "response", "latency_s", "prompt_tokens", "completion_tokens",
               "finish_reason", "error"]


# --- memory -----------------------------------------------------------------------------------------------------

class PeakMemory:
    """Peak RSS growth of this process while the block runs (sampled every 20 ms), plus CUDA peak when used."""

    def __init__(self, interval_s: float = 0.02):
        self.proc = psutil.Process()
        self.interval_s = interval_s
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cuda_peak: int | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self.baseline = self.peak = self.proc.memory_info().rss
        try:
            import torch  # deferred: heavy optional dependency

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
            import torch  # deferred: heavy optional dependency

            if torch.cuda.is_available():
                self.cuda_peak = int(torch.cuda.max_memory_allocated())
        except Exception:
            pass

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


# --- generation backends ------------------------------------------------------------------------------------

def budget(item: dict, default: int) -> int:
    """An item's answer budget: its category's own `max_tokens` when set, never more than `default`."""
    own = item.get("max_new_tokens")
    return min(int(own), default) if own else default


def batches_by_budget(items: list[dict], size: int, default: int):
    """Batches of up to `size` items that share one answer budget (a batch generates to its budget)."""
    groups: dict[int, list[dict]] = {}
    for it in items:
        groups.setdefault(budget(it, default), []).append(it)
    for _, group in sorted(groups.items()):
        for b in range(0, len(group), size):
            yield group[b:b + size]


def generate_teacher(complete: Callable, items: list[dict], max_new_tokens: int) -> pd.DataFrame:
    """Greedy teacher answers through an open `teacher.session(...)`'s `complete(requests, category=...)`."""
    rows = []
    by_cat: dict[str, list[dict]] = {}
    for it in items:
        by_cat.setdefault(it["category"], []).append(it)
    for cat, its in sorted(by_cat.items()):
        reqs = [ChatRequest(messages=it["messages"], temperature=0.0, max_tokens=budget(it, max_new_tokens),
                            sample_index=0, tools=it.get("tools"), tag=it["example_id"]) for it in its]
        for it, res in zip(its, complete(reqs, cat)):
            # tool calls as their text lines: the form the students write and the scorer reads
            text = message_text({"content": res.content, "tool_calls": res.tool_calls}) if res.ok else None
            rows.append({"example_id": it["example_id"], "variant": TEACHER, "category": cat,
                         "response": text, "latency_s": float(res.latency_s or 0) or None,
                         "prompt_tokens": int(res.prompt_tokens or 0), "completion_tokens": int(res.completion_tokens or 0),
                         "finish_reason": res.finish_reason, "error": None if res.ok else f"{res.status}: {res.error}"})
    return pd.DataFrame(rows, columns=GEN_COLUMNS)


def generate_hf(model_dir: str, items: list[dict], variant: str, max_new_tokens: int,
                threads: int | None = None, batch_size: int = 8) -> tuple[pd.DataFrame, dict]:
    """Greedy transformers generation with the model's chat template, `batch_size` prompts per generate()
    (left-padded). Each answer's latency is the wall time of its batch: what a caller served in that batch
    waits. batch_size=1 measures one request at a time."""
    import torch  # deferred: heavy optional dependency
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy optional dependency

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
            texts = [render(tok, it["messages"], it.get("tools"), add_generation_prompt=True) for it in batch]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            width = int(enc["input_ids"].shape[1])
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=budget(batch[0], max_new_tokens), do_sample=False,
                                     pad_token_id=pad,
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

        for batch in batches_by_budget(items, batch_size, max_new_tokens):
            try:
                rows.extend(run_batch(batch))
            except Exception:  # one bad prompt (e.g. over the context) must not lose the batch: one at a time
                for it in batch:
                    try:
                        rows.extend(run_batch([it]))
                    except Exception as e:
                        rows.append(failed(it, e))
        model = None  # frees the weights before the next variant loads
    return pd.DataFrame(rows, columns=GEN_COLUMNS), {
        "backend": f"transformers ({device}, batch {batch_size})", "load_s": load_s, "peak_mem_mb": mem.delta_mb,
        "peak_gpu_mem_mb": (mem.cuda_peak / 2**20) if mem.cuda_peak else None}


def _gguf_worker(path: str, items: list[dict], variant: str, max_new_tokens: int, n_ctx: int,
                 threads: int | None) -> tuple[list[dict], dict]:
    base_rss = psutil.Process().memory_info().rss
    from llama_cpp import Llama  # deferred: heavy optional dependency

    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, seed=0, verbose=False)
    load_s = time.perf_counter() - t0
    rows = []
    for it in items:
        try:
            t = time.perf_counter()
            out = llm.create_chat_completion(messages=it.get("student_messages", it["messages"]), temperature=0.0,
                                             top_k=1, top_p=1.0, max_tokens=budget(it, max_new_tokens), seed=0)
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
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        fut = pool.submit(_gguf_worker, path, items, variant, max_new_tokens, n_ctx, threads)
        try:
            rows, info = fut.result(timeout=timeout_s)
        except BrokenProcessPool:
            raise RuntimeError("the llama.cpp worker process died (a llama-cpp-python build for another CPU dies "
                               "with SIGILL 'invalid opcode'; install a portable wheel)") from None
    return pd.DataFrame(rows, columns=GEN_COLUMNS), info


def generate_awq(path: str, items: list[dict], variant: str, max_new_tokens: int) -> tuple[pd.DataFrame, dict]:
    """The AWQ (compressed-tensors W4A16) folder through vLLM, which reads the scheme from its config.json;
    callers check `awq_vllm_unavailable()` first."""
    from vllm import LLM, SamplingParams  # deferred: heavy optional dependency

    rows = []
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        llm = LLM(model=path, seed=0)
        load_s = time.perf_counter() - t0
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, seed=0)
        for it in items:
            t = time.perf_counter()
            gen = llm.chat([it.get("student_messages", it["messages"])], params, use_tqdm=False)[0]
            latency = time.perf_counter() - t
            comp = gen.outputs[0]
            rows.append({"example_id": it["example_id"], "variant": variant, "category": it["category"],
                         "response": comp.text, "latency_s": latency, "prompt_tokens": len(gen.prompt_token_ids or []),
                         "completion_tokens": len(comp.token_ids or []), "finish_reason": comp.finish_reason,
                         "error": None})
    return pd.DataFrame(rows, columns=GEN_COLUMNS), {
        "backend": "vllm (compressed-tensors w4a16)", "load_s": load_s, "peak_mem_mb": mem.delta_mb,
        "peak_gpu_mem_mb": (mem.cuda_peak / 2**20) if mem.cuda_peak else None}
