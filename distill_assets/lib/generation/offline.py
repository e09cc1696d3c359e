"""Generation through an offline batch runner such as `vllm run-batch`, which reads and writes the Batch API's
JSONL files but serves no /v1/batches endpoint.

`export_requests` walks a category's generation phases over the answers already in `teacher_calls` and writes
the first phase with unanswered calls as a batch input file, one line per call, `custom_id` = its call key.
`import_results` puts the runner's output lines into `teacher_calls` under those keys, so the next
`raw_generations` run answers that phase from the cache and goes on with the next one (export again, or let it
call the teacher online or in batch mode).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from distill_assets.lib.errors import InputError
from distill_assets.lib.generation.plan import Step, initial_steps, next_steps
from distill_assets.lib.tasks import Category
from resources.batch import BatchRequest, read_results, write_jsonl
from resources.clock import utcnow
from resources.llm import ChatRequest, ChatResult, LLMResource, call_key
from resources.llm_http import parse_completion
from resources.llm_journal import LEDGER_COLUMNS
from resources.store import DuckDBStore


def _key_and_body(teacher: LLMResource, model: str) -> Callable[[ChatRequest], tuple[str, dict]]:
    form = teacher.structured_output_form

    def of(req: ChatRequest) -> tuple[str, dict]:
        params = req.params(form)  # as LLMSession.key and LLMSession.body: the same call keys as a live run
        return call_key(model, req.messages, params, req.sample_index), {"model": model, "messages": req.messages,
                                                                         **params}
    return of


def _answered(store: DuckDBStore, keys: list[str]) -> dict[str, str]:
    if not keys:
        return {}
    with store.connect() as conn:
        conn.register("_keys", pd.DataFrame({"call_key": keys}))
        try:
            rows = conn.execute("SELECT call_key, response FROM teacher_calls JOIN _keys USING (call_key) "
                                "WHERE status = 'ok'").fetchall()
        finally:
            conn.unregister("_keys")
    return dict(rows)


@dataclass
class Export:
    phase: int  # 1-based; 0 when nothing is left to ask
    requests: int
    answered: int  # calls of the phases walked that the ledger already holds


def export_requests(category: Category, seeds: pd.DataFrame, store: DuckDBStore, teacher: LLMResource, model: str,
                    path: Path) -> Export:
    """Write the first phase with unanswered calls as a batch input file (nothing when every call is answered)."""
    of = _key_and_body(teacher, model)
    steps: list[Step] = initial_steps(category, seeds)
    phase, answered = 0, 0
    while steps:
        phase += 1
        pairs = [of(s.request) for s in steps]
        known = _answered(store, list(dict.fromkeys(k for k, _ in pairs)))
        todo = {k: body for k, body in pairs if k not in known}
        answered += sum(1 for k, _ in pairs if k in known)
        if todo:
            path.write_bytes(write_jsonl(BatchRequest(k, body) for k, body in todo.items()))
            return Export(phase, len(todo), answered)
        following: list[Step] = []
        for step, (k, _) in zip(steps, pairs):
            if step.kind != "answer":
                following += next_steps(category, step, ChatResult(k, model, "ok", known[k]))
        steps = following
    return Export(0, 0, answered)


@dataclass
class Import:
    answered: int
    failed: int
    already: int
    unknown: int
    errors: list[str]


def _requests(path: Path) -> dict[str, dict]:
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            out[str(item["custom_id"])] = item["body"]
        except (ValueError, KeyError, TypeError) as e:
            field = e.args[0] if isinstance(e, KeyError) else None
            raise InputError(path, n, field, f"not a batch request line ({type(e).__name__}: {e})") from None
    return out


def import_results(store: DuckDBStore, teacher: LLMResource, requests_path: Path, results_path: Path,
                   category: str | None = None, run_id: str = "offline-batch") -> Import:
    """Record the answers of `results_path` (the runner's output for `requests_path`) in teacher_calls at the
    batch price. Failed lines are left out: the next run asks them again."""
    sent = _requests(requests_path)
    results, _, errors = read_results(results_path.read_bytes(), str(results_path))
    known = _answered(store, [k for k in results if k in sent])
    rows, failed, unknown = [], 0, 0
    now = utcnow()
    for cid, item in results.items():
        body = sent.get(cid)
        if body is None:
            unknown += 1
            continue
        answer = parse_completion(item.body) if item.ok else None
        if answer is None or not answer.ok:
            failed += 1
            continue
        if cid in known:
            continue
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        rows.append({
            "call_key": cid, "model": answer.model or body["model"], "role": teacher.role, "status": "ok",
            "response": answer.content, "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "cost_usd": teacher.cost(answer.prompt_tokens, answer.completion_tokens, batch=True), "latency_s": 0.0,
            "attempts": 1, "error": None, "category": category, "run_id": run_id,
            "request_json": json.dumps({"messages": body["messages"], **params,
                                        "sample_index": int(body.get("seed") or 0)}, ensure_ascii=False),
            "created_at": now, "budget_scope": teacher.budget_scope or teacher.role,
        })
    if rows:
        store.insert_df("teacher_calls", pd.DataFrame(rows, columns=LEDGER_COLUMNS), on_conflict="replace")
    return Import(len(rows), failed, len(known), unknown, errors)
