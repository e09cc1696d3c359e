"""The resources every asset shares, built from the environment. Secrets stay `dg.EnvVar`s."""

from __future__ import annotations

import dagster as dg

from distill_assets.lib.ledger import open_io_manager, open_store
from distill_assets.lib.settings import (
    cache_root,
    embedded_embedder_dir,
    embedded_teacher_gguf,
    embedder_backend,
    embedder_path,
    llm_env,
    openai_headers_env,
)
from resources.embedder import EmbedderResource
from resources.llm import LLMResource


def _base_url_of(fallback: str) -> str | None:
    return llm_env(fallback).get("BASE_URL", (None, None))[0]


def llm_from_env(prefix: str, role: str, fallback: str | None = None) -> LLMResource:
    """TEACHER_* / JUDGE_* variables; the judge falls back to the teacher's settings."""
    found = llm_env(prefix, fallback)

    def pick(suffix: str) -> tuple[str | None, str | None]:
        return found.get(suffix, (None, None))

    base_url, url_var = pick("BASE_URL")
    model, _ = pick("MODEL")
    _, key_var = pick("API_KEY")
    if key_var and fallback and key_var.startswith(f"{fallback}_") and url_var and url_var.startswith(f"{prefix}_"):
        teacher_url = _base_url_of(fallback)
        if base_url != teacher_url:  # another host never receives the teacher's key
            key_var = None
    for suffix in ("MODE", "BATCH_DISCOUNT"):
        var = pick(suffix)[1]
        if var and fallback and var.startswith(f"{fallback}_") and base_url != _base_url_of(fallback):
            found.pop(suffix)  # another host is not assumed to serve the Batch API
    kwargs = dict(role=role, base_url=base_url, model=model,
                  api_key=dg.EnvVar(key_var) if key_var else None,
                  embedded_model_path=None if base_url else str(embedded_teacher_gguf()),
                  env_prefix=prefix, **openai_headers_env())
    for field, suffix, cast in [
        ("max_concurrency", "MAX_CONCURRENCY", int), ("backend", "BACKEND", str),
        ("price_prompt_per_1m", "PRICE_PROMPT_PER_1M", float),
        ("price_completion_per_1m", "PRICE_COMPLETION_PER_1M", float),
        ("max_budget_usd", "MAX_BUDGET_USD", float), ("max_total_tokens", "MAX_TOTAL_TOKENS", int),
        ("request_timeout_s", "TIMEOUT_S", float), ("max_retries", "MAX_RETRIES", int),
        ("structured_output", "STRUCTURED_OUTPUT", str), ("budget_scope", "BUDGET_SCOPE", str),
        ("mode", "MODE", str.lower), ("batch_discount", "BATCH_DISCOUNT", float),
        ("tool_calls", "TOOL_CALLS", str),
    ]:
        v, var = pick(suffix)
        if v is None:
            continue
        try:  # checked one by one so that the error names the variable, not the resource field
            kwargs[field] = cast(v)
            LLMResource(role=role, **{field: kwargs[field]})
        except (ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
            why = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
            raise ValueError(f"environment variable {var}={v!r} is not a valid {field}: {why}") from None
    return LLMResource(**kwargs)


def build_resources() -> dict:
    return {
        "io_manager": open_io_manager(),  # DISTILL_STORE: the DuckDB file or a DuckLake
        "store": open_store(),
        "teacher": llm_from_env("TEACHER", "teacher"),
        "judge": llm_from_env("JUDGE", "judge", fallback="TEACHER"),
        "embedder": EmbedderResource(model_path=embedder_path(),
                                     embedded_model_dir=None if embedder_path() else str(embedded_embedder_dir()),
                                     backend=embedder_backend(), cache_dir=str(cache_root())),
    }


def embedded_embedder(**kwargs) -> EmbedderResource:
    """The packaged all-MiniLM-L6-v2."""
    kwargs.setdefault("cache_dir", str(cache_root()))
    return EmbedderResource(embedded_model_dir=str(embedded_embedder_dir()), **kwargs)


def embedded_llm(role: str = "teacher", **kwargs) -> LLMResource:
    """The packaged SmolLM2-135M-Instruct, served by llama.cpp on a loopback port."""
    return LLMResource(role=role, embedded_model_path=str(embedded_teacher_gguf()), **kwargs)


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())

