"""`raw_generations`: teacher outputs per category by the task's generation methods."""

import json

import dagster as dg
import pandas as pd

from distill_assets.defs.partitions import CATEGORY
from distill_assets.lib.generation.logprobs import student_token_map
from distill_assets.lib.generation.plan import all_call_keys, category_cost, generate
from distill_assets.lib.ids import frame_version
from distill_assets.lib.stages import preview_markdown
from distill_assets.lib.tasks import load_tasks
from resources.llm import LLMResource
from resources.store import DuckDBStore


def _turn_counts(df: pd.DataFrame) -> dict[str, int]:
    turns = df["messages"].map(lambda m: sum(x.get("role") == "assistant" for x in json.loads(m))) if len(df) else []
    return {str(k): int(v) for k, v in pd.Series(turns, dtype="int64").value_counts().sort_index().items()}


@dg.asset(
    partitions_def=CATEGORY,
    group_name="generation",
    kinds={"openai", "duckdb"},
    code_version="generation-v2",
    metadata={"partition_expr": "category"},
    pool="teacher",
    ins={"seed_prompts": dg.AssetIn("seed_prompts")},
)
def raw_generations(context: dg.AssetExecutionContext, seed_prompts: pd.DataFrame, store: DuckDBStore,
                    teacher: LLMResource) -> dg.Output[pd.DataFrame]:
    """Teacher generations of one category (one row per answered sample) by the task's methods, with the chat
    `messages` to train on, the teacher model, params, tokens, latency and the call key into `teacher_calls`.
    Every call is cached: a rerun after a crash pays only for calls never answered."""
    category = load_tasks().category(context.partition_key)
    if seed_prompts.empty:
        raise ValueError(f"seed_prompts[{category.name}] is empty; materialize seed_prompts first")
    # generation.logprobs: answers carry the teacher's top-k logprobs, stored as student token ids
    token_map = student_token_map() if category.generation.logprobs else None
    with teacher.session(store, run_id=context.run.run_id, logger=context.log, token_map=token_map) as session:
        df, stats = generate(category, seed_prompts, session)
        model = session.model
        logprob_stats = {k: session.stats[k] for k in ("logprobs", "no_logprobs")}
        budget = session.budget_status()  # spent and remaining across every run in the store
    if df.empty and stats.failed:
        raise RuntimeError(
            f"raw_generations[{category.name}]: all {stats.failed} teacher call(s) failed {stats.failures}; "
            "nothing was generated. The failures are in teacher_calls; a rerun retries them."
        )
    if stats.failed:
        context.log.warning(f"{stats.failed} call(s) failed after retries {stats.failures}; rerun to retry them")
    if stats.budget_note:
        context.log.warning(stats.budget_note)
    cost = category_cost(store, all_call_keys(df))
    version = frame_version(df, ["generation_id", "response"])
    return dg.Output(
        df,
        metadata={
            "rows": dg.MetadataValue.int(len(df)),
            "by_method": dg.MetadataValue.json(df["method"].value_counts().to_dict()),
            "by_assistant_turns": dg.MetadataValue.json(_turn_counts(df)),
            "teacher": dg.MetadataValue.json({**teacher.describe(), "model": model,
                                              "mode": category.generation.mode or teacher.mode}),
            "calls": dg.MetadataValue.int(stats.calls),
            "calls_from_cache": dg.MetadataValue.int(stats.cached),
            "calls_failed": dg.MetadataValue.int(stats.failed),
            "budget_stop": dg.MetadataValue.text(stats.budget_note or "no"),
            "budget": dg.MetadataValue.json(budget),
            "teacher_logprobs": dg.MetadataValue.json({"top_k": category.generation.logprobs or 0,
                                                       "tokenizer": token_map.name if token_map else None,
                                                       "new_rows": logprob_stats["logprobs"],
                                                       "answers_without": logprob_stats["no_logprobs"]}),
            "prompt_tokens": dg.MetadataValue.int(cost["prompt_tokens"]),
            "completion_tokens": dg.MetadataValue.int(cost["completion_tokens"]),
            "cost_usd": dg.MetadataValue.float(round(cost["cost_usd"], 6)),
            "seconds": dg.MetadataValue.float(round(stats.seconds, 2)),
            "preview": dg.MetadataValue.md(preview_markdown(df, ["generation_id", "method", "instruction", "response"])),
        },
        data_version=dg.DataVersion(version),
    )


assets = [raw_generations]
