"""`eval_report`: teacher vs base student vs merged student vs every runnable export on the held-out eval set.

Thin wiring over lib/evaluation (variants, metrics, pairwise, report, pipeline). Writes per-example rows to
`eval_results` and one row per (adapter version, variant, category) to `eval_summary` (a rerun on the same
adapter version replaces its rows), the HTML report under $DISTILL_HOME/reports/, and a markdown summary.
The `eval_gate` check (checks/eval_report.py) turns the summary into a promotion decision.
"""

import json
from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from checks.eval_report import build_eval_report_checks
from checks.upstream import upstream_artifact_or_reason
from distill_assets.lib.evaluation import pairwise as pw
from distill_assets.lib.evaluation import pipeline as pl
from distill_assets.lib.evaluation import report as rp
from distill_assets.lib.evaluation import variants as vr
from distill_assets.lib.evaluation.change import change_sentence
from distill_assets.lib.evaluation.metrics import MERGED, score_generations
from distill_assets.lib.evaluation.signal import describe, has_signal
from distill_assets.lib.evaluation.summary import summary_table
from distill_assets.lib.export.gguf import cached_f16_gguf
from distill_assets.lib.settings import get_settings
from distill_assets.lib.tasks import load_tasks
from resources.llm import LLMResource
from resources.store import DuckDBStore

UPSTREAM = ["merged_model", "gguf_export", "awq_export", "student_base_model"]


class EvalReportConfig(dg.Config):
    max_new_tokens: int = Field(default=256, ge=1, description="generation budget, the same for every variant; "
                                                               "a category's own max_tokens caps its items")
    max_examples_per_category: int | None = Field(default=None, ge=1, description="cap (quickstart); None = all")
    uncapped_categories: list[str] = Field(default_factory=list,
                                           description="categories evaluated on every held-out item despite the cap")
    judge_max_tokens: int = Field(default=256, ge=8)
    judge_exports: bool = Field(default=True, description="judge each export against the teacher too")
    judge_scope: Literal["all", "open_ended"] = Field(
        default="all", description="open_ended: the pairwise judge only rates categories without an exact verifier "
                                   "(verify: none); labels, math, code and tool calls are scored exactly anyway")
    hardware_usd_per_hour: float = Field(default=0.10, ge=0,
                                         description="$/hour of the machine running local variants (cost estimate)")
    n_bootstrap: int = Field(default=2000, ge=100)
    too_short_ratio: float = Field(default=0.25, ge=0, le=1,
                                   description="a failed answer under this share of the teacher's length is too_short")
    gguf_kinds: list[str] = Field(default_factory=lambda: list(vr.GGUF_KINDS))
    gguf_n_ctx: int = Field(default=2048, ge=256)
    gguf_timeout_s: float | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, ge=1, description="CPU threads for local variants")
    hf_batch_size: int = Field(default=8, ge=1, description="transformers variants: prompts per generate(); "
                                                           "1 measures one request at a time")
    code_timeout_s: float = Field(default=5.0, gt=0)
    student_backend: Literal["transformers", "llama.cpp"] = Field(
        default="transformers", description="llama.cpp: base and merged answer from f16 GGUF files (the merged "
                                            "one is the parity-checked export), on the backend the exports use")


def _upstream_variants(context: dg.AssetExecutionContext, store: DuckDBStore) -> dict:
    """The artifact each upstream materialization in this run's lineage names (or why there is none)."""
    return {asset: upstream_artifact_or_reason(context, store, asset, several=asset == "gguf_export")
            for asset in UPSTREAM}


def _base_f16_gguf(spec: vr.VariantSpec) -> Path:
    name = str(spec.artifact_id or "base").replace(":", "-")
    return cached_f16_gguf(spec.path, get_settings().artifacts / "eval_gguf" / f"{name}-f16.gguf")


@dg.asset(
    group_name="evaluation",
    kinds={"python", "duckdb"},
    code_version="eval-report-v2",
    ins={"eval_set": dg.AssetIn()},
    deps=UPSTREAM,
    description="Teacher vs base vs merged student vs exports: task metrics, both-order judge win rates, "
                "transfer ratios, strata, efficiency, failure analysis; HTML report + eval_results/eval_summary.",
)
def eval_report(context: dg.AssetExecutionContext, config: EvalReportConfig, eval_set: pd.DataFrame,
                store: DuckDBStore, teacher: LLMResource, judge: LLMResource) -> dg.MaterializeResult:
    tasks = load_tasks()
    categories = {c.name: c for c in tasks.categories}
    eval_df = pl.select_eval(eval_set, tasks.names, config.max_examples_per_category, config.uncapped_categories)
    if eval_df.empty:
        raise dg.Failure("eval_set is empty: materialize eval_set for the task's categories first")
    run_id = context.run.run_id
    log = context.log.info

    found = _upstream_variants(context, store)
    specs = vr.discover_variants(found, gguf_kinds=tuple(config.gguf_kinds))
    if config.student_backend == "llama.cpp":
        specs = vr.students_on_llama_cpp(specs, found, _base_f16_gguf, log=context.log.info)
    merged = next((s for s in specs if s.name == MERGED), None)
    version = vr.adapter_version_of(merged)
    items = vr.build_items(eval_df, categories)
    threads = config.threads or vr.default_threads()

    with teacher.session(store, run_id=run_id, logger=context.log) as ts:
        t_gens, t_eff = vr.run_variants(
            [s for s in specs if s.kind == "teacher"], items, max_new_tokens=config.max_new_tokens,
            teacher_complete=lambda reqs, cat: ts.complete(reqs, category=cat, label=f"eval teacher {cat}"),
            teacher_price={}, usd_per_hour=config.hardware_usd_per_hour, log=log)
    price = vr.teacher_ledger_price(store, teacher.price_prompt_per_1m, teacher.price_completion_per_1m)
    t_eff["usd_per_1m_tokens"] = price["usd_per_1m_tokens"]
    s_gens, s_eff = vr.run_variants(
        [s for s in specs if s.kind != "teacher"], items, max_new_tokens=config.max_new_tokens, teacher_complete=None,
        teacher_price=price, usd_per_hour=config.hardware_usd_per_hour, threads=threads,
        gguf_n_ctx=config.gguf_n_ctx, gguf_timeout_s=config.gguf_timeout_s,
        hf_batch_size=config.hf_batch_size, log=log)
    gens = pd.concat([t_gens, s_gens], ignore_index=True)
    efficiency = pd.DataFrame(t_eff.to_dict("records") + s_eff.to_dict("records"))

    scored = score_generations(eval_df, gens, categories, token_counter=pl.token_counter(merged),
                               code_timeout_s=config.code_timeout_s)
    pairs_df = pl.judge_pair_frame(scored, config.judge_exports,
                                   categories=pl.judged_categories(categories, config.judge_scope))
    with judge.session(store, run_id=run_id, logger=context.log) as js:
        judged = pw.judge_pairs(pairs_df, lambda reqs, cat: js.complete(reqs, category=cat, label=f"eval judge {cat}"),
                                max_tokens=config.judge_max_tokens)

    results = rp.attach_judgments(scored, judged, adapter_version=version, run_id=run_id,
                                  too_short_ratio=config.too_short_ratio)
    summary = summary_table(results, efficiency, categories, adapter_version=version, run_id=run_id,
                            n_boot=config.n_bootstrap)
    pl.store_results(store, results, summary, version)
    out = pl.write_eval_report(store, results=results, summary=summary, efficiency=efficiency, version=version,
                               run_id=run_id, teacher_price=price, config=config.model_dump(),
                               reports_dir=get_settings().reports, n_bootstrap=config.n_bootstrap)
    head, failures = out["headline"], out["failures"]

    def num(v):
        return dg.MetadataValue.float(float(v)) if v is not None and v == v else dg.MetadataValue.text("n/a")

    def win(vs: str):
        # a judge without signal has no win rate to show, only the reason
        signal = head.get("judge_signal" if vs == "teacher" else "base_judge_signal")
        return num(head.get(f"win_rate_vs_{vs}")) if has_signal(signal) else dg.MetadataValue.text(describe(signal))

    for vs, key in (("teacher", "judge_signal"), ("base", "base_judge_signal")):
        if not has_signal(head.get(key)):
            context.log.warning(f"pairwise judge vs {vs}: {describe(head.get(key))}; no win rate reported")

    return dg.MaterializeResult(metadata={
        "change_vs_base": dg.MetadataValue.md(f"**{change_sentence(summary)}**\n\n{out['change_markdown']}"),
        "improved_categories": dg.MetadataValue.json(head.get("improved_categories", [])),
        "regressed_categories": dg.MetadataValue.json(head.get("regressed_categories", [])),
        "summary": dg.MetadataValue.md(out["markdown"]),
        "report_path": dg.MetadataValue.path(str(out["path"])),
        "adapter_version": dg.MetadataValue.text(version),
        "win_rate_vs_teacher": win("teacher"),
        "win_rate_vs_base": win("base"),
        "judge_signal": dg.MetadataValue.json({"vs_teacher": head.get("judge_signal"),
                                               "vs_base": head.get("base_judge_signal")}),
        "transfer_ratio": num(head.get("transfer_ratio")),
        "consistency_rate": num(head.get("consistency_rate")),
        "examples": dg.MetadataValue.int(int(eval_df["eval_id"].nunique())),
        "variants": dg.MetadataValue.json({r["variant"]: (r["status"] if r["status"] == "ok" else r["reason"])
                                           for r in efficiency.to_dict("records")}),
        "failures": dg.MetadataValue.json(json.loads(failures.groupby("failure_category").size().to_json())
                                          if not failures.empty else {}),
    }, data_version=dg.DataVersion(f"{version}:{run_id[:8]}"))


assets = [eval_report]
asset_checks = build_eval_report_checks(eval_report.key)
eval_gate = asset_checks[0]
