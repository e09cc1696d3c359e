"""LLM endpoints (teacher and judge) over the OpenAI chat-completions protocol, with a crash-safe call cache.

Every response is appended to a per-session journal the moment it arrives and flushed to `teacher_calls` in
batches; a session that was killed leaves its journal, which the next session replays first. A call whose key
(model, messages, params, sample index) is already `ok` in the ledger is never sent again.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import random
import sys
import threading
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from distill_assets.ids import call_key
from resources import llama_server
from resources.store import DuckDBStore, insert_df, utcnow

log = logging.getLogger("distill.llm")

RETRYABLE_STATUS = {408, 409, 429}
OK = "ok"


@dataclass
class ChatRequest:
    messages: list[dict]
    temperature: float = 0.7
    max_tokens: int = 512
    sample_index: int = 0
    top_p: float | None = None
    # Structured output: a JSON schema the answer must follow (constrained decoding on llama.cpp, vLLM, OpenAI).
    # Small judges then always answer in a readable form, and no call is spent re-asking.
    json_schema: dict | None = None
    schema_name: str = "answer"
    tag: Any = None  # the caller's handle; not part of the cache key

    def params(self, structured_output: str = "json_schema") -> dict:
        """The sampling parameters as sent; `structured_output` picks the wire form of `json_schema`."""
        # the sample index doubles as the sampling seed: samples differ, and each is reproducible
        p = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.sample_index}
        if self.top_p is not None:
            p["top_p"] = self.top_p
        if self.json_schema is not None and structured_output != "off":
            if structured_output == "json_object":  # llama-cpp-python's form (its server rejects "json_schema")
                p["response_format"] = {"type": "json_object", "schema": self.json_schema}
            else:  # the OpenAI form, also read by vLLM, SGLang and Ollama's OpenAI endpoint
                p["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": self.schema_name, "schema": self.json_schema, "strict": True}}
        return p


@dataclass
class ChatResult:
    call_key: str
    model: str
    status: str  # ok | empty | malformed | error | budget_exceeded
    content: str | None = None  # only ever set when status == ok
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    attempts: int = 0
    error: str | None = None
    cached: bool = False
    tag: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == OK


class BudgetExceeded(RuntimeError):
    pass


class LLMUnavailableError(RuntimeError):
    pass


class LLMResource(dg.ConfigurableResource):
    """An OpenAI-compatible chat model (teacher or judge).

    With no `base_url` the resource starts the embedded llama.cpp server with the packaged
    SmolLM2-135M-Instruct on a free loopback port and stops it afterwards; the request path is the same as for
    a remote vLLM, OpenAI or Ollama server. `backend="vllm"` runs an in-process vLLM engine (gpu extra + CUDA).
    """

    role: str = Field(default="teacher", description="ledger role: teacher | judge | student")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    model: str | None = Field(default=None, description="model name sent to the server (or a path for vllm)")
    api_key: str | None = Field(default=None, description="API key; pass dg.EnvVar('TEACHER_API_KEY')")
    backend: Literal["auto", "openai", "vllm"] = "auto"
    max_concurrency: int = Field(default=64, ge=1, le=4096)
    embedded_max_concurrency: int = Field(default=2, ge=1, description="llama.cpp serves one request at a time")
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=6, ge=0, le=50)
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    retry_after_cap_s: float = Field(default=120.0, ge=0)
    price_prompt_per_1m: float = Field(default=0.0, ge=0, description="USD per 1M prompt tokens")
    price_completion_per_1m: float = Field(default=0.0, ge=0, description="USD per 1M completion tokens")
    max_budget_usd: float | None = Field(default=None, ge=0, description="stop a run's new calls past this spend")
    max_total_tokens: int | None = Field(default=None, ge=0, description="stop a run's new calls past this many tokens")
    flush_every_s: float = Field(default=1.0, gt=0)
    flush_every_n: int = Field(default=256, ge=1)
    embedded_n_ctx: int = 2048
    embedded_threads: int | None = None
    structured_output: Literal["auto", "json_schema", "json_object", "off"] = Field(
        default="auto", description="wire form of JSON-schema answers: auto = json_object for the embedded "
                                    "llama.cpp server, json_schema (OpenAI form) otherwise; off = plain prompts")

    @property
    def embedded(self) -> bool:
        return not self.base_url and self.backend != "vllm"

    @property
    def structured_output_form(self) -> str:
        if self.structured_output != "auto":
            return self.structured_output
        return "json_object" if self.embedded else "json_schema"

    def describe(self) -> dict:
        """What the UI may show: never the key."""
        return {
            "role": self.role,
            "backend": "vllm" if self.backend == "vllm" else ("embedded llama.cpp" if self.embedded else "openai"),
            "base_url": self.base_url or "(embedded)",
            "model": self.model or llama_server.EMBEDDED_ALIAS,
            "max_concurrency": self.max_concurrency,
            "price_prompt_per_1m": self.price_prompt_per_1m,
            "price_completion_per_1m": self.price_completion_per_1m,
        }

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_prompt_per_1m + completion_tokens * self.price_completion_per_1m) / 1e6

    @contextmanager
    def session(self, store: DuckDBStore, *, run_id: str = "", logger: Any = None) -> Iterator["LLMSession"]:
        """Open the endpoint (starting the embedded server if needed) and a journal; flush and close after."""
        from distill_assets.settings import embedded_teacher_gguf

        base_url, model, concurrency, acquired = self.base_url, self.model, self.max_concurrency, None
        engine = None
        if self.backend == "vllm":
            engine = VLLMEngine(self.model)
            model = self.model
        elif self.embedded:
            acquired = llama_server.acquire(
                embedded_teacher_gguf(), n_ctx=self.embedded_n_ctx, n_threads=self.embedded_threads
            )
            base_url, model = acquired, llama_server.EMBEDDED_ALIAS
            concurrency = min(concurrency, self.embedded_max_concurrency)
        if not model:
            raise ValueError(f"{self.role}: set a model name (e.g. {self.role.upper()}_MODEL) for {base_url}")
        session = LLMSession(self, store, base_url=base_url, model=model, concurrency=concurrency,
                             run_id=run_id, logger=logger, engine=engine)
        try:
            yield session
        finally:
            session.close()
            if acquired:
                llama_server.release(acquired)


class _Journal:
    """Append-only JSONL of results not yet in DuckDB, held under an flock while its writer lives."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"calls-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.fh = open(self.path, "a", encoding="utf-8")
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)

    def append(self, row: dict) -> None:
        # flushed to the OS at once: a kill -9 of this process loses nothing already written
        self.fh.write(json.dumps(row, default=str) + "\n")
        self.fh.flush()

    def close(self, delete: bool) -> None:
        self.fh.close()
        if delete:
            self.path.unlink(missing_ok=True)


def replay_journals(store: DuckDBStore, directory: Path) -> int:
    """Move the rows of journals left by dead sessions into teacher_calls; returns the rows recovered."""
    if not directory.exists():
        return 0
    recovered = 0
    for path in sorted(directory.glob("calls-*.jsonl")):
        try:
            fh = open(path, "r", encoding="utf-8")
        except FileNotFoundError:
            continue
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            rows = []
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line torn by the kill; that call is simply made again
            if rows:
                frame = pd.DataFrame(rows)
                frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
                with store.connect() as conn:
                    insert_df(conn, "teacher_calls", _latest_per_key(frame), on_conflict="replace")
                recovered += len(rows)
        path.unlink(missing_ok=True)
    return recovered


def _latest_per_key(frame: pd.DataFrame) -> pd.DataFrame:
    # an ok answer must never be overwritten by a later failure of the same key
    frame = frame.assign(_ok=(frame["status"] == OK).astype(int))
    return frame.sort_values(["_ok", "created_at"]).drop_duplicates("call_key", keep="last").drop(columns="_ok")


LEDGER_COLUMNS = [
    "call_key", "model", "role", "status", "response", "finish_reason", "prompt_tokens", "completion_tokens",
    "cost_usd", "latency_s", "attempts", "error", "category", "run_id", "request_json", "created_at",
]


class LLMSession:
    """One open endpoint: `complete()` runs requests with bounded concurrency, cache, retries and budget."""

    def __init__(self, cfg: LLMResource, store: DuckDBStore, *, base_url: str | None, model: str, concurrency: int,
                 run_id: str, logger: Any, engine: "VLLMEngine | None" = None):
        self.cfg, self.store, self.base_url, self.model = cfg, store, base_url, model
        self.concurrency, self.run_id, self.engine = concurrency, run_id, engine
        # imports aiohttp and resolves the proxy once per session, not per complete()
        self.http = None if engine is not None else _ChatHTTP(base_url, cfg.api_key, concurrency,
                                                              cfg.request_timeout_s)
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
        self.spent_usd = 0.0
        self.spent_tokens = 0
        self.reserved_usd = 0.0
        self.reserved_tokens = 0
        self.budget_hit: str | None = None
        self.stats = {"cached": 0, "ok": 0, "failed": 0, "retries": 0}

    # ledger ------------------------------------------------------------------------------------------------
    def _record(self, result: ChatResult, request: ChatRequest, category: str | None,
                defer_flush: bool = False) -> bool:
        """Journal one result; returns True when a deferred flush is due (the caller runs it off-loop)."""
        row = {
            "call_key": result.call_key, "model": result.model, "role": self.cfg.role, "status": result.status,
            "response": result.content, "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "cost_usd": result.cost_usd, "latency_s": result.latency_s, "attempts": result.attempts,
            "error": result.error, "category": category, "run_id": self.run_id,
            "request_json": json.dumps({"messages": request.messages, **self.params(request),
                                        "sample_index": request.sample_index}, ensure_ascii=False),
            "created_at": utcnow().isoformat(),
        }
        with self._swap:
            self.journal.append(row)
            self.pending.append(row)
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
            old_journal, self.journal = self.journal, _Journal(self.journal_dir)
        frame = pd.DataFrame(batch, columns=LEDGER_COLUMNS)
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        try:
            with self.store.connect() as conn:
                insert_df(conn, "teacher_calls", _latest_per_key(frame), on_conflict="replace")
        except BaseException:
            with self._swap:
                self.pending = batch + self.pending
            old_journal.close(delete=False)  # its rows stay recoverable by replay
            raise
        self.last_flush = time.monotonic()
        old_journal.close(delete=True)  # its rows are durable in DuckDB now

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.journal.close(delete=not self.pending)

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
    def _reserve(self, request: ChatRequest) -> tuple[float, int] | None:
        est_prompt = sum(len(str(m.get("content", ""))) for m in request.messages) // 3 + 8
        est_tokens = est_prompt + request.max_tokens
        est_cost = self.cfg.cost(est_prompt, request.max_tokens)
        if self.cfg.max_budget_usd is not None and self.spent_usd + self.reserved_usd + est_cost > self.cfg.max_budget_usd:
            self.budget_hit = (f"max_budget_usd={self.cfg.max_budget_usd} reached "
                               f"(spent ${self.spent_usd:.4f} this run); generation stopped cleanly")
            return None
        if self.cfg.max_total_tokens is not None and self.spent_tokens + self.reserved_tokens + est_tokens > self.cfg.max_total_tokens:
            self.budget_hit = (f"max_total_tokens={self.cfg.max_total_tokens} reached "
                               f"({self.spent_tokens} tokens this run); generation stopped cleanly")
            return None
        self.reserved_usd += est_cost
        self.reserved_tokens += est_tokens
        return est_cost, est_tokens

    # calls --------------------------------------------------------------------------------------------------
    def params(self, request: ChatRequest) -> dict:
        return request.params(self.cfg.structured_output_form)

    def key(self, request: ChatRequest) -> str:
        # keyed on what is sent: the same judge prompt with and without a schema are different calls
        return call_key(self.model, request.messages, self.params(request), request.sample_index)

    def complete(self, requests: list[ChatRequest], *, category: str | None = None, label: str = "calls",
                 progress: Callable[[int, int, dict], None] | None = None) -> list[ChatResult]:
        """Run all requests; results come back in request order. Cached `ok` keys are never re-sent."""
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
                done = self.engine.run([requests[i] for i in unique], self)
                for i, res in zip(unique, done):
                    self._record(res, requests[i], category)
            else:
                done = _run_async(self._run_openai([requests[i] for i in unique], [keys[i] for i in unique],
                                                   tracker, category))
            for i, res in zip(unique, done):
                results[i] = res
        for i in todo:
            if results[i] is None:
                src = results[first_of[keys[i]]]
                results[i] = ChatResult(**{**asdict(src), "tag": requests[i].tag, "cached": True})
            else:
                results[i].tag = requests[i].tag
        self.flush()
        tracker.finish()
        return results  # type: ignore[return-value]

    async def _run_openai(self, requests: list[ChatRequest], keys: list[str], tracker: "_Progress",
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
                if record(res, req, category, defer_flush=True):  # journaled the moment it arrives
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

    async def _call_with_retries(self, http: "_ChatHTTP", req: ChatRequest, key: str) -> ChatResult:
        params = self.params(req)
        reservation = self._reserve(req)
        if reservation is None:
            return ChatResult(key, self.model, "budget_exceeded", error=self.budget_hit)
        payload = json.dumps({"model": self.model, "messages": req.messages, **params}).encode()
        attempts, last_error, last_status = 0, None, "error"
        started = time.monotonic()
        try:
            for attempt in range(self.cfg.max_retries + 1):
                attempts = attempt + 1
                retry_after = None
                t0 = time.monotonic()
                try:
                    raw = await http.post(payload)
                    latency = time.monotonic() - t0
                    try:
                        body = json.loads(raw)
                        choice = body["choices"][0]
                        content = choice["message"].get("content")
                        usage = body.get("usage") or {}
                        finish = choice.get("finish_reason")
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                        last_status, last_error = "malformed", f"malformed response: {type(e).__name__}: {e}"[:300]
                    else:
                        pt = int(usage.get("prompt_tokens") or 0)
                        ct = int(usage.get("completion_tokens") or 0)
                        cost = self.cfg.cost(pt, ct)
                        self.spent_usd += cost
                        self.spent_tokens += pt + ct
                        if not isinstance(content, str) or not content.strip():
                            last_status, last_error = "empty", "empty content"
                        else:
                            self.stats["ok"] += 1
                            return ChatResult(key, body.get("model") or self.model, OK, content, finish, pt, ct,
                                              latency, cost, attempts)
                except APIStatusError as e:
                    code = e.status_code
                    last_status, last_error = "error", f"HTTP {code}: {str(e)[:200]}"
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
                              attempts, f"gave up after {attempts} attempt(s): {last_error}")
        finally:
            self.reserved_usd -= reservation[0]
            self.reserved_tokens -= reservation[1]

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.cfg.retry_after_cap_s) + random.uniform(0, 0.1)
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * (2 ** attempt))
        return base * random.uniform(0.75, 1.25)  # jitter so retries do not arrive in waves


class APIStatusError(Exception):
    """The server answered with a non-2xx status; the message is the openai SDK's ("Error code: 429 - ...")."""

    def __init__(self, status_code: int, message: str, headers: Any):
        super().__init__(message)
        self.status_code, self.headers = status_code, headers


class APIConnectionError(Exception):
    """No usable answer: connection refused, reset or dropped, or the response framing broke."""


class APITimeoutError(APIConnectionError):
    """No complete answer within `request_timeout_s`."""


def _status_message(code: int, raw: bytes) -> str:
    # the openai SDK's wording: only the body's error.message is quoted, never the whole body
    msg = f"Error code: {code}"
    try:
        body = json.loads(raw)
    except ValueError:
        return msg
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f"{msg} - {message}" if isinstance(message, str) and message else msg


class _ChatHTTP:
    """POST {base_url}/chat/completions over one keep-alive aiohttp pool of `concurrency` connections.

    The openai SDK's request path (option building, httpx, httpcore's pool and h11) costs ~2 ms of CPU per call,
    which at hundreds of calls/s on a small machine, not the server, bounds throughput; aiohttp's C parser and
    pool cost ~0.3 ms. Headers, errors and messages are the SDK's (see APIStatusError and friends).
    """

    def __init__(self, base_url: str, api_key: str | None, concurrency: int, timeout_s: float):
        import urllib.request
        from urllib.parse import urlsplit

        import aiohttp
        from yarl import URL

        self._aiohttp = aiohttp
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._url = URL(self.url)
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self._headers = {"Authorization": f"Bearer {api_key or 'not-needed'}", "Content-Type": "application/json",
                         "Accept": "application/json", "User-Agent": f"distill aiohttp/{aiohttp.__version__}"}
        # what AsyncOpenAI reads from the environment when not given
        for env, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if os.environ.get(env):
                self._headers[header] = os.environ[env]
        # HTTP(S)_PROXY / NO_PROXY as httpx honours them, resolved once: aiohttp's trust_env would look them up,
        # and read ~/.netrc in a thread, on every request
        host, scheme = urlsplit(self.url).hostname or "", urlsplit(self.url).scheme
        self.proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(scheme)
        self.session = None

    def __repr__(self) -> str:  # never the key
        return f"_ChatHTTP({self.url!r})"

    @asynccontextmanager
    async def open(self) -> AsyncIterator["_ChatHTTP"]:
        """A copy with its own keep-alive pool, for one event loop (each complete() runs its own)."""
        import copy

        opened = copy.copy(self)
        opened.session = self._aiohttp.ClientSession(
            connector=self._aiohttp.TCPConnector(limit=self.concurrency),
            timeout=self._aiohttp.ClientTimeout(total=self.timeout_s),  # per attempt, connecting included
            headers=self._headers,
        )
        try:
            yield opened
        finally:
            await opened.session.close()

    async def post(self, payload: bytes) -> bytes:
        """The response body of a 2xx answer; APIStatusError, APITimeoutError or APIConnectionError otherwise."""
        try:
            async with self.session.post(self._url, data=payload, proxy=self.proxy, allow_redirects=False) as resp:
                raw = await resp.read()
                code = resp.status
                if not 200 <= code < 300:
                    raise APIStatusError(code, _status_message(code, raw), resp.headers)
                return raw
        except asyncio.TimeoutError:
            raise APITimeoutError(f"Request timed out after {self.timeout_s}s.") from None
        except self._aiohttp.ClientError as e:
            raise APIConnectionError(str(e) or type(e).__name__) from e


def _run_async(coro):
    """uvloop when installed (it ships with uvicorn): about 2x cheaper socket I/O per call than asyncio's loop."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
        except (TypeError, ValueError):
            return None


class _Progress:
    """n/total, tokens/s and ETA in the Dagster log; a tqdm bar when run from a terminal."""

    def __init__(self, total: int, label: str, logger: Any, callback, cached: int = 0):
        self.total, self.label, self.log, self.callback = total, label, logger, callback
        self.done, self.tokens, self.failed = 0, 0, 0
        self.t0 = time.monotonic()
        self.last_log = 0.0
        self.bar = None
        if total and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="call")
        if total:
            self.log.info(f"{label}: {total} call(s) to make, {cached} answered from the cache")

    def step(self, res: ChatResult) -> None:
        self.done += 1
        self.tokens += res.completion_tokens
        self.failed += 0 if res.ok else 1
        if self.bar is not None:
            self.bar.update(1)
        now = time.monotonic()
        if now - self.last_log > 5 or self.done == self.total:
            self.last_log = now
            elapsed = max(now - self.t0, 1e-6)
            rate = self.done / elapsed
            eta = (self.total - self.done) / rate if rate else 0
            self.log.info(
                f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                f"{self.tokens / elapsed:.1f} tok/s, {rate:.1f} calls/s, ETA {eta:.0f}s, failed {self.failed}"
            )
        if self.callback:
            self.callback(self.done, self.total, {"tokens": self.tokens, "failed": self.failed})

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()


class VLLMEngine:
    """In-process vLLM (`vllm.LLM`) for a GPU machine; same cache and ledger as the HTTP path."""

    def __init__(self, model: str | None):
        try:
            import torch

            if not torch.cuda.is_available():
                raise LLMUnavailableError("backend=vllm needs CUDA; none is available on this machine")
            import vllm  # noqa: F401  (gpu extra)
        except ImportError as e:
            raise LLMUnavailableError(
                f"backend=vllm needs the gpu extra (pip install 'distill[gpu]'): {e}"
            ) from None
        if not model:
            raise ValueError("backend=vllm needs `model` (a local path or hub id)")
        from vllm import LLM

        self.llm = LLM(model=model)
        self.model = model

    def run(self, requests: list[ChatRequest], session: LLMSession) -> list[ChatResult]:
        from vllm import SamplingParams

        out = []
        params = [SamplingParams(temperature=r.temperature, max_tokens=r.max_tokens, top_p=r.top_p or 1.0,
                                 seed=r.sample_index, **self._structured(r)) for r in requests]
        t0 = time.monotonic()
        generations = self.llm.chat([r.messages for r in requests], params, use_tqdm=sys.stderr.isatty())
        latency = (time.monotonic() - t0) / max(1, len(requests))
        for req, gen in zip(requests, generations):
            comp = gen.outputs[0]
            pt, ct = len(gen.prompt_token_ids or []), len(comp.token_ids or [])
            text = comp.text
            status = OK if text and text.strip() else "empty"
            out.append(ChatResult(session.key(req), self.model, status, text if status == OK else None,
                                  comp.finish_reason, pt, ct, latency, session.cfg.cost(pt, ct), 1,
                                  None if status == OK else "empty content"))
        return out

    @staticmethod
    def _structured(req: ChatRequest) -> dict:
        if req.json_schema is None:
            return {}
        try:  # vLLM >= 0.10
            from vllm.sampling_params import StructuredOutputsParams

            return {"structured_outputs": StructuredOutputsParams(json=req.json_schema)}
        except ImportError:
            from vllm.sampling_params import GuidedDecodingParams

            return {"guided_decoding": GuidedDecodingParams(json=req.json_schema)}
