"""One open LLM endpoint: bounded concurrency, the call cache, retries, budget and the ledger."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from resources.batch import redact_url
from resources.budget import SharedBudget
from resources.clock import parse_utc, utcnow
from resources.llm_batch import run_batch
from resources.llm_http import Completion, _ChatHTTP, _Progress, _retry_after, _run_async, parse_completion
from resources.llm_journal import (
    LEDGER_COLUMNS,
    _Journal,
    _latest_per_key,
    replay_journals,
)
from resources.llm_logprobs import JOURNAL_KEY, TokenMap, logprob_frame, logprob_row
from resources.llm_tools import CONSTRAINED, calls_from_answer, constrained_request
from resources.llm_types import (
    OK,
    RETRYABLE_STATUS,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ChatRequest,
    ChatResult,
    LLMAuthError,
    call_key,
    log,
)
from resources.store import DuckDBStore, insert_df

if TYPE_CHECKING:  # annotations only: the resource and the engine construct sessions
    from resources.llm import LLMResource
    from resources.vllm_engine import VLLMEngine


class LLMSession:
    """One open endpoint: `complete()` runs requests with bounded concurrency, cache, retries and budget."""

    def __init__(self, cfg: LLMResource, store: DuckDBStore, *, base_url: str | None, model: str, concurrency: int,
                 run_id: str, logger: Any, engine: VLLMEngine | None = None, token_map: TokenMap | None = None):
        self.cfg, self.store, self.base_url, self.model = cfg, store, base_url, model
        self.token_map = token_map  # turns the teacher's logprob tokens into ids (requests with top_logprobs)
        self.concurrency, self.run_id, self.engine = concurrency, run_id, engine
        # imports aiohttp and resolves the proxy once per session, not per complete()
        self.http = None if engine is not None else _ChatHTTP(base_url, cfg.api_key, concurrency,
                                                              cfg.request_timeout_s, cfg.headers())
        self.log = logger or log
        self.journal_dir = Path(store.database).parent / "journal"
        recovered = replay_journals(store, self.journal_dir)
        if recovered:
            self.log.info(f"recovered {recovered} call(s) from an interrupted session's journal")
        self.journal = _Journal(self.journal_dir)
        self.pending: list[dict] = []
        self._flushing = False
        self._swap = threading.Lock()  # a row is in exactly one journal and one batch
        self.last_flush = time.monotonic()
        self.spent_usd = 0.0  # this session's own new calls, for its metadata
        self.spent_tokens = 0
        prefix = cfg.env_prefix or cfg.role.upper()
        self.budget = SharedBudget(store, role=cfg.role, scope=cfg.budget_scope, max_usd=cfg.max_budget_usd,
                                   max_tokens=cfg.max_total_tokens, usd_var=f"{prefix}_MAX_BUDGET_USD",
                                   tokens_var=f"{prefix}_MAX_TOTAL_TOKENS", claim_calls=concurrency)
        self._estimates: list[tuple[float, int]] = []  # of journaled rows not yet in the ledger, as `pending`
        self.budget_hit: str | None = None
        self.stats = {"cached": 0, "ok": 0, "failed": 0, "retries": 0, "logprobs": 0, "no_logprobs": 0}

    # ledger ------------------------------------------------------------------------------------------------
    def _record(self, result: ChatResult, request: ChatRequest | None, category: str | None,
                defer_flush: bool = False, estimate: tuple[float, int] | None = None) -> bool:
        """Journal one result; returns True when a deferred flush is due (the caller runs it off-loop).
        `request` is None only for a batch answer whose request this run no longer makes (its text stays in the
        batch input file)."""
        row = {
            "call_key": result.call_key, "model": result.model, "role": self.cfg.role, "status": result.status,
            "response": result.content, "finish_reason": result.finish_reason,
            "tool_calls": json.dumps(result.tool_calls, ensure_ascii=False) if result.tool_calls else None,
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "cost_usd": result.cost_usd, "latency_s": result.latency_s, "attempts": result.attempts,
            "error": result.error, "category": category, "run_id": self.run_id,
            "request_json": None if request is None else json.dumps(
                {"messages": request.messages, **self.params(request), "sample_index": request.sample_index},
                ensure_ascii=False),
            "created_at": utcnow().isoformat(), "budget_scope": self.budget.scope,
        }
        if result.ok and request.top_logprobs:
            if result.logprobs is not None:
                row[JOURNAL_KEY] = logprob_row(result.call_key, result.model, result.logprobs, request.top_logprobs,
                                               self.token_map, row["created_at"])
                self.stats["logprobs"] += 1
            elif not self.stats["no_logprobs"]:
                self.stats["no_logprobs"] = 1
                self.log.warning(f"{self.cfg.role} endpoint answered without logprobs though top_logprobs="
                                 f"{request.top_logprobs} was asked: this server does not return them")
            else:
                self.stats["no_logprobs"] += 1
        with self._swap:
            self.journal.append(row)
            self.pending.append(row)
            self._estimates.append(estimate or (0.0, 0))
        due = len(self.pending) >= self.cfg.flush_every_n or time.monotonic() - self.last_flush > self.cfg.flush_every_s
        if due and not self._flushing:
            if defer_flush:
                self._flushing = True
                return True
            self.flush()
        return False

    def flush(self) -> None:
        try:
            self._flush()
        finally:
            self._flushing = False

    def _flush(self) -> None:
        if not self.pending:
            return
        # results that arrive while this runs in a worker thread go to the next batch and the new journal
        with self._swap:
            batch, self.pending = self.pending, []
            estimates, self._estimates = self._estimates, []
            old_journal, self.journal = self.journal, _Journal(self.journal_dir)
        frame = pd.DataFrame(batch, columns=LEDGER_COLUMNS)
        frame["created_at"] = parse_utc(frame["created_at"])
        try:
            calls, logprobs = _latest_per_key(frame), logprob_frame(batch)

            def write(conn) -> None:  # one transaction: a call and its logprobs land together
                insert_df(conn, "teacher_calls", calls, on_conflict="replace")
                insert_df(conn, "teacher_logprobs", logprobs, on_conflict="replace")

            self.store.transact(write)
        except BaseException:
            with self._swap:
                self.pending = batch + self.pending
                self._estimates = estimates + self._estimates
            old_journal.close(delete=False)  # its rows stay recoverable by replay
            raise
        # their real cost is in the ledger now, so their estimates leave the shared reservation
        self.budget.release(sum(e[0] for e in estimates), sum(e[1] for e in estimates))
        self.last_flush = time.monotonic()
        old_journal.close(delete=True)  # its rows are durable in DuckDB now

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.journal.close(delete=not self.pending)
            self.budget.close()

    def budget_status(self) -> dict:
        """Spent and remaining for this session's budget scope, across every run in the store."""
        return {**self.budget.status().as_dict(), "spent_this_session_usd": round(self.spent_usd, 6),
                "budget_stopped": self.budget_hit}

    def cached(self, keys: list[str]) -> dict[str, dict]:
        if not keys:
            return {}
        frame = pd.DataFrame({"call_key": keys})
        with self.store.connect() as conn:
            conn.register("_keys", frame)
            try:
                hits = conn.execute(
                    "SELECT t.* FROM teacher_calls t JOIN _keys k USING (call_key) WHERE t.status = 'ok'"
                ).df()
            finally:
                conn.unregister("_keys")
        return {r["call_key"]: r for r in hits.to_dict("records")}

    # budget --------------------------------------------------------------------------------------------------
    def _reserve(self, request: ChatRequest, batch: bool = False) -> tuple[float, int] | None:
        """An upper estimate of the call's cost, reserved in the shared budget; None when the cap is reached."""
        est_prompt = sum(len(str(m.get("content", ""))) for m in request.messages) // 3 + 8
        est_tokens = est_prompt + request.max_tokens
        est_cost = self.cfg.cost(est_prompt, request.max_tokens, batch=batch)
        if not self.budget.reserve(est_cost, est_tokens):
            self.budget_hit = self.budget.exhausted
            return None
        return est_cost, est_tokens

    # calls --------------------------------------------------------------------------------------------------
    def params(self, request: ChatRequest) -> dict:
        return request.params(self.cfg.structured_output_form)

    def body(self, request: ChatRequest) -> dict:
        """The /v1/chat/completions request body, online and in a batch input file alike."""
        return {"model": self.model, "messages": request.messages, **self.params(request)}

    def wire(self, request: ChatRequest) -> ChatRequest:
        """The request as this endpoint is sent it: `tools` as a constrained JSON answer where the server
        cannot take them (llm_tools.py), otherwise unchanged."""
        if request.tools and request.tool_form is None and self.cfg.tool_calls_form == CONSTRAINED:
            return constrained_request(request)
        return request

    def key(self, request: ChatRequest) -> str:
        # keyed on what is sent: the same judge prompt with and without a schema are different calls
        return call_key(self.model, request.messages, self.params(request), request.sample_index)

    def complete(self, requests: list[ChatRequest], *, category: str | None = None, label: str = "calls",
                 progress: Callable[[int, int, dict], None] | None = None,
                 mode: str | None = None) -> list[ChatResult]:
        """Run all requests; results come back in request order. Cached `ok` keys are never re-sent.
        `mode`: online (concurrent HTTP calls) or batch (one Batch API job, see llm_batch); None: the resource's."""
        mode = self._check_mode(mode)
        if self.token_map is None and any(r.top_logprobs for r in requests):
            raise ValueError(f"{self.cfg.role}: requests ask for top_logprobs but the session has no token map "
                             "to store them with; open it with session(..., token_map=...)")
        requests = [self.wire(r) for r in requests]
        keys = [self.key(r) for r in requests]
        hits = self.cached(list(dict.fromkeys(keys)))
        results: list[ChatResult | None] = [None] * len(requests)
        todo = []
        for i, (req, k) in enumerate(zip(requests, keys)):
            hit = hits.get(k)
            if hit is not None:
                results[i] = ChatResult(
                    call_key=k, model=hit["model"], status=OK, content=hit["response"],
                    finish_reason=hit["finish_reason"], prompt_tokens=int(hit["prompt_tokens"] or 0),
                    completion_tokens=int(hit["completion_tokens"] or 0), latency_s=float(hit["latency_s"] or 0),
                    cost_usd=0.0, attempts=0, cached=True, tag=req.tag,
                    tool_calls=json.loads(hit["tool_calls"]) if isinstance(hit.get("tool_calls"), str) else None,
                )
            else:
                todo.append(i)
        self.stats["cached"] += len(requests) - len(todo)
        # identical keys in one batch are sent once
        first_of: dict[str, int] = {}
        unique = []
        for i in todo:
            if keys[i] not in first_of:
                first_of[keys[i]] = i
                unique.append(i)
        tracker = _Progress(len(unique), label, self.log, progress, cached=len(requests) - len(todo))
        if unique:
            if self.engine is not None:
                done = self._run_engine([requests[i] for i in unique], category, tracker)
            elif mode == "batch":
                done = run_batch(self, [requests[i] for i in unique], [keys[i] for i in unique], tracker,
                                 category, label)
            else:
                done = _run_async(self._run_openai([requests[i] for i in unique], [keys[i] for i in unique],
                                                   tracker, category))
            for i, res in zip(unique, done):
                results[i] = res
        for i in todo:
            if results[i] is None:
                src = results[first_of[keys[i]]]
                results[i] = replace(src, tag=requests[i].tag, cached=True)
            else:
                results[i].tag = requests[i].tag
        self.flush()
        tracker.finish()
        for req, res in zip(requests, results):
            if req.tool_form == CONSTRAINED and res is not None and res.ok and not res.tool_calls:
                res.tool_calls = calls_from_answer(res.content)
                if res.tool_calls:
                    res.content = ""
        return results  # type: ignore[return-value]

    def _check_mode(self, mode: str | None) -> str:
        mode = mode or self.cfg.mode
        if mode not in ("online", "batch"):
            raise ValueError(f"{self.cfg.role}: mode {mode!r} must be online or batch")
        if mode == "batch" and (self.engine is not None or self.cfg.embedded):
            where = "the in-process vLLM engine" if self.engine is not None else "the embedded llama.cpp server"
            prefix = self.cfg.env_prefix or self.cfg.role.upper()
            raise ValueError(f"{self.cfg.role}: batch mode needs an endpoint with the OpenAI Batch API "
                             f"({prefix}_BASE_URL, e.g. https://api.openai.com/v1); {where} has none. Set "
                             f"{prefix}_MODE=online (or generation.mode: online in the task file)")
        return mode

    def _run_engine(self, requests: list[ChatRequest], category: str | None,
                    tracker: _Progress) -> list[ChatResult]:
        """The in-process engine in chunks: each chunk is budgeted before it runs and journaled as it returns,
        so a kill loses at most one chunk's answers and the cap holds as on the HTTP path."""
        out: list[ChatResult] = []
        chunk = max(1, self.cfg.engine_chunk)
        for start in range(0, len(requests), chunk):
            part = requests[start:start + chunk]
            reserved = [self._reserve(r) for r in part]
            go = [r for r, res in zip(part, reserved) if res is not None]
            answers = iter(self.engine.run(go, self) if go else [])
            for req, res in zip(part, reserved):
                result = (next(answers) if res is not None
                          else ChatResult(self.key(req), self.model, "budget_exceeded", error=self.budget_hit))
                result.reserved = res
                self._record(result, req, category, estimate=res)
                tracker.step(result)
                out.append(result)
            self.flush()
        return out

    async def _run_openai(self, requests: list[ChatRequest], keys: list[str], tracker: _Progress,
                          category: str | None) -> list[ChatResult]:
        # `concurrency` workers over one shared queue, not a task per request behind a semaphore: a request
        # then costs no task and no semaphore hand-over, and requests still go out in order
        results: list[ChatResult | None] = [None] * len(requests)
        todo = iter(range(len(requests)))
        flushes: list[asyncio.Task] = []
        record, step, call = self._record, tracker.step, self._call_with_retries

        async def worker() -> None:
            for i in todo:
                req = requests[i]
                res = results[i] = await call(http, req, keys[i])
                if record(res, req, category, defer_flush=True, estimate=res.reserved):  # journaled at once
                    # in a thread (DuckDB releases the GIL), and not awaited here, so this worker sends on
                    flushes.append(asyncio.ensure_future(asyncio.to_thread(self.flush)))
                step(res)

        async with self.http.open() as http:
            try:
                await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(requests)))))
            finally:
                await asyncio.gather(*flushes, return_exceptions=True)
        for f in flushes:
            if f.exception() is not None:
                raise f.exception()
        return results  # type: ignore[return-value]

    async def _call_with_retries(self, http: _ChatHTTP, req: ChatRequest, key: str) -> ChatResult:
        reservation = self._reserve(req)
        if reservation is None:
            return ChatResult(key, self.model, "budget_exceeded", error=self.budget_hit)
        payload = json.dumps(self.body(req)).encode()
        attempts, last_error, last_status = 0, None, "error"
        started = time.monotonic()
        for attempt in range(self.cfg.max_retries + 1):
            attempts = attempt + 1
            retry_after = None
            t0 = time.monotonic()
            try:
                raw = await http.post(payload)
                res = self._result(key, parse_completion(raw, want_logprobs=bool(req.top_logprobs)),
                                   time.monotonic() - t0, attempts, reservation)
                if res.ok:
                    return res
                last_status, last_error = res.status, res.error
            except APIStatusError as e:
                code = e.status_code
                last_status, last_error = "error", f"HTTP {code}: {str(e)[:200]}"
                if code in (401, 403):
                    given = "the key in " + self.cfg.key_variable if self.cfg.api_key else "no API key"
                    raise LLMAuthError(
                        f"{self.cfg.role} endpoint {redact_url(self.base_url or '')} answered HTTP {code} with "
                        f"{given}: set {self.cfg.key_variable} to a key for this host") from None
                if code not in RETRYABLE_STATUS and code < 500:
                    break  # 400/401/403/404/422: retrying cannot help
                retry_after = _retry_after(e.headers)
            except APITimeoutError:
                last_status, last_error = "error", f"timeout after {self.cfg.request_timeout_s}s"
            except APIConnectionError as e:
                last_status, last_error = "error", f"connection error: {e}"[:300]
            if attempt < self.cfg.max_retries:
                self.stats["retries"] += 1
                await asyncio.sleep(self._delay(attempt, retry_after))
        self.stats["failed"] += 1
        return ChatResult(key, self.model, last_status, None, None, 0, 0, time.monotonic() - started, 0.0,
                          attempts, f"gave up after {attempts} attempt(s): {last_error}", reserved=reservation)

    def _result(self, key: str, answer: Completion, latency: float, attempts: int,
                reserved: tuple[float, int] | None, batch: bool = False) -> ChatResult:
        """One parsed answer as a result, its billed tokens counted (at the batch price for a batch line)."""
        cost = self.cfg.cost(answer.prompt_tokens, answer.completion_tokens, batch=batch) if answer.billed else 0.0
        self.spent_usd += cost
        self.spent_tokens += answer.prompt_tokens + answer.completion_tokens
        if not answer.ok:
            return ChatResult(key, self.model, answer.status, None, None, 0, 0, latency, 0.0, attempts, answer.error,
                              reserved=reserved)
        self.stats["ok"] += 1
        return ChatResult(key, answer.model or self.model, OK, answer.content, answer.finish_reason,
                          answer.prompt_tokens, answer.completion_tokens, latency, cost, attempts, reserved=reserved,
                          logprobs=answer.logprobs, tool_calls=answer.tool_calls)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.cfg.retry_after_cap_s) + random.uniform(0, 0.1)
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * (2 ** attempt))
        return base * random.uniform(0.75, 1.25)  # jitter so retries do not arrive in waves
