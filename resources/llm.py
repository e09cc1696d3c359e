"""LLM endpoints (teacher and judge) over the OpenAI chat-completions protocol, with a crash-safe call cache.

Every response is appended to a per-session journal the moment it arrives and flushed to `teacher_calls` in
batches; a session that was killed leaves its journal, which the next session replays first. A call whose key
(model, messages, params, sample index) is already `ok` in the ledger is never sent again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from resources import llama_server
from resources.batch import redact_url
from resources.llm_logprobs import TokenMap
from resources.llm_session import LLMSession
from resources.llm_types import (  # the request/result types callers import from here
    BudgetExceeded,
    ChatRequest,
    ChatResult,
    LLMUnavailableError,
    TokenLogprobs,
    call_key,
)
from resources.store import DuckDBStore
from resources.vllm_engine import VLLMEngine


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
    max_budget_usd: float | None = Field(default=None, ge=0, description="cap on the spend of the budget scope, across all runs")
    max_total_tokens: int | None = Field(default=None, ge=0,
                                         description="cap on the tokens of the budget scope, across all runs")
    budget_scope: str | None = Field(default=None, description="name of the shared budget; default: the role")
    env_prefix: str | None = Field(default=None, description="TEACHER / JUDGE: names the variables in messages")
    engine_chunk: int = Field(default=64, ge=1, description="in-process engine: requests per journaled chunk")
    flush_every_s: float = Field(default=1.0, gt=0)
    flush_every_n: int = Field(default=256, ge=1)
    organization: str | None = Field(default=None, description="OpenAI-Organization header (OPENAI_ORG_ID)")
    project: str | None = Field(default=None, description="OpenAI-Project header (OPENAI_PROJECT_ID)")
    embedded_model_path: str | None = Field(default=None, description="GGUF served when base_url is unset")
    embedded_n_ctx: int = 2048
    embedded_threads: int | None = None
    mode: Literal["online", "batch"] = Field(
        default="online", description="online: concurrent HTTP calls; batch: each complete() is one OpenAI Batch "
                                      "API job (results within 24 h, at the batch price)")
    batch_discount: float = Field(default=0.5, gt=0, le=1,
                                  description="batch price = online price x this (OpenAI: half price)")
    batch_poll_interval_s: float = Field(default=10.0, gt=0, description="first wait between batch status polls")
    batch_max_poll_interval_s: float = Field(default=300.0, gt=0, description="the wait grows 1.5x up to this")
    batch_max_wait_s: float | None = Field(default=None, gt=0, description="stop polling after this (the batch "
                                           "keeps running; a rerun resumes it); None: until it ends")
    batch_max_requests: int = Field(default=50_000, ge=1, description="requests per batch job (OpenAI's limit)")
    batch_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024, description="input file bytes per batch job")
    structured_output: Literal["auto", "json_schema", "json_object", "off"] = Field(
        default="auto", description="wire form of JSON-schema answers: auto = json_object for the embedded "
                                    "llama.cpp server, json_schema (OpenAI form) otherwise; off = plain prompts")
    tool_calls: Literal["auto", "native", "json_schema"] = Field(
        default="auto", description="how requests with `tools` go out: native = the OpenAI `tools` parameter; "
                                    "json_schema = the call as a constrained JSON answer (llm_tools.py); auto = "
                                    "json_schema for the embedded llama.cpp server and in-process vLLM, else native")

    @property
    def embedded(self) -> bool:
        return not self.base_url and self.backend != "vllm"

    @property
    def structured_output_form(self) -> str:
        if self.structured_output != "auto":
            return self.structured_output
        return "json_object" if self.embedded else "json_schema"

    @property
    def tool_calls_form(self) -> str:
        if self.tool_calls != "auto":
            return self.tool_calls
        return "json_schema" if self.embedded or self.backend == "vllm" else "native"

    def describe(self) -> dict:
        """What the UI may show: never the key."""
        return {
            "role": self.role,
            "backend": "vllm" if self.backend == "vllm" else ("embedded llama.cpp" if self.embedded else "openai"),
            "base_url": redact_url(self.base_url) if self.base_url else "(embedded)",
            "model": self.model or llama_server.EMBEDDED_ALIAS,
            "max_concurrency": self.max_concurrency,
            "mode": self.mode,
            "batch_discount": self.batch_discount,
            "tool_calls": self.tool_calls_form,
            "price_prompt_per_1m": self.price_prompt_per_1m,
            "price_completion_per_1m": self.price_completion_per_1m,
        }

    @property
    def key_variable(self) -> str:
        """The variable that holds this role's API key, for messages."""
        return f"{self.env_prefix or self.role.upper()}_API_KEY"

    def headers(self) -> dict[str, str]:
        """Extra request headers, as the OpenAI SDK sends them."""
        pairs = (("OpenAI-Organization", self.organization), ("OpenAI-Project", self.project))
        return {k: v for k, v in pairs if v}

    def cost(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        usd = (prompt_tokens * self.price_prompt_per_1m + completion_tokens * self.price_completion_per_1m) / 1e6
        return usd * self.batch_discount if batch else usd

    @contextmanager
    def session(self, store: DuckDBStore, *, run_id: str = "", logger: Any = None,
                token_map: TokenMap | None = None) -> Iterator[LLMSession]:
        """Open the endpoint (starting the embedded server if needed) and a journal; flush and close after.
        `token_map` turns the tokens of answers asked with `top_logprobs` into ids for `teacher_logprobs`."""
        base_url, model, concurrency, acquired = self.base_url, self.model, self.max_concurrency, None
        engine = None
        if self.backend == "vllm":
            engine = VLLMEngine(self.model)
            model = self.model
        elif self.embedded:
            if not self.embedded_model_path:
                raise ValueError(f"{self.role}: set base_url, or embedded_model_path for the embedded server")
            acquired = llama_server.acquire(
                Path(self.embedded_model_path), n_ctx=self.embedded_n_ctx, n_threads=self.embedded_threads
            )
            base_url, model = acquired, llama_server.EMBEDDED_ALIAS
            concurrency = min(concurrency, self.embedded_max_concurrency)
        if not model:
            raise ValueError(f"{self.role}: set a model name (e.g. {self.role.upper()}_MODEL) for "
                             f"{redact_url(base_url) if base_url else 'the endpoint'}")
        session = LLMSession(self, store, base_url=base_url, model=model, concurrency=concurrency,
                             run_id=run_id, logger=logger, engine=engine, token_map=token_map)
        try:
            yield session
        finally:
            session.close()
            if acquired:
                llama_server.release(acquired)


__all__ = ["BudgetExceeded", "ChatRequest", "ChatResult", "LLMResource", "LLMSession", "LLMUnavailableError",
           "TokenLogprobs", "TokenMap", "call_key"]
