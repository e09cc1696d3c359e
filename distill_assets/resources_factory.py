"""Builds the resource dict from the environment (DESIGN.md's variables). Secrets stay `dg.EnvVar`s."""

from __future__ import annotations

import os

import dagster as dg

from distill_assets.settings import get_settings
from resources.embedder import EmbedderResource
from resources.io_manager import DistillDuckDBIOManager
from resources.llm import LLMResource
from resources.store import DuckDBStore


def _env(name: str) -> str | None:
    v = os.environ.get(name)
    return v if v else None


def _float(name: str) -> float | None:
    v = _env(name)
    return float(v) if v is not None else None


def llm_from_env(prefix: str, role: str, fallback: str | None = None) -> LLMResource:
    """TEACHER_* / JUDGE_* variables; the judge falls back to the teacher's settings."""
    def pick(suffix: str) -> tuple[str | None, str | None]:
        for p in (prefix, fallback):
            if p and _env(f"{p}_{suffix}"):
                return _env(f"{p}_{suffix}"), f"{p}_{suffix}"
        return None, None

    base_url, _ = pick("BASE_URL")
    model, _ = pick("MODEL")
    _, key_var = pick("API_KEY")
    kwargs = dict(role=role, base_url=base_url, model=model,
                  api_key=dg.EnvVar(key_var) if key_var else None)
    for field, suffix, cast in [
        ("max_concurrency", "MAX_CONCURRENCY", int), ("backend", "BACKEND", str),
        ("price_prompt_per_1m", "PRICE_PROMPT_PER_1M", float),
        ("price_completion_per_1m", "PRICE_COMPLETION_PER_1M", float),
        ("max_budget_usd", "MAX_BUDGET_USD", float), ("max_total_tokens", "MAX_TOTAL_TOKENS", int),
        ("request_timeout_s", "TIMEOUT_S", float), ("max_retries", "MAX_RETRIES", int),
        ("structured_output", "STRUCTURED_OUTPUT", str),
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
    s = get_settings()
    db = str(s.database)
    return {
        "io_manager": DistillDuckDBIOManager(database=db),
        "store": DuckDBStore(database=db),
        "teacher": llm_from_env("TEACHER", "teacher"),
        "judge": llm_from_env("JUDGE", "judge", fallback="TEACHER"),
        "embedder": EmbedderResource(model_path=_env("EMBEDDER_PATH")),
    }
