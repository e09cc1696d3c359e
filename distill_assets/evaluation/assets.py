"""`eval_report`: teacher vs base student vs merged student vs every runnable export on the held-out eval set.

Thin wiring over the pure functions in metrics / pairwise / variants / report. Writes per-example rows to
`eval_results` and one row per (adapter version, variant, category) to `eval_summary` (a rerun on the same
adapter version replaces its rows), the HTML report under $DISTILL_HOME/reports/, and a markdown summary.
"""


import json

import dagster as dg
import pandas as pd
from pydantic import Field

from distill_assets.evaluation import pairwise as pw
from distill_assets.evaluation import report as rp
from distill_assets.evaluation import variants as vr
from distill_assets.evaluation.metrics import BASE, MERGED, OVERALL, TEACHER, score_generations, stratified_breakdown
from distill_assets.settings import get_settings
from distill_assets.tasks import load_tasks
from resources.llm import LLMResource
from resources.store import DuckDBStore

UPSTREAM = ["merged_model", "gguf_export", "awq_export", "student_base_model"]

DDL = {
    "eval_results": """
        CREATE TABLE IF NOT EXISTS eval_results (
            example_id VARCHAR, variant VARCHAR, category VARCHAR, difficulty VARCHAR, source VARCHAR,
            length_bucket VARCHAR, prompt VARCHAR, response VARCHAR, metric VARCHAR, score DOUBLE,
            task_status VARCHAR, task_detail VARCHAR, rouge_l DOUBLE, response_tokens BIGINT, finish_reason VARCHAR,
            latency_s DOUBLE, generation_error VARCHAR, judge_verdict VARCHAR, judge_score DOUBLE,
            judge_consistent BOOLEAN, judge_rationale VARCHAR, judge_vs_base_verdict VARCHAR,
            judge_vs_base_score DOUBLE, judge_vs_base_consistent BOOLEAN, failure_category VARCHAR,
            adapter_version VARCHAR, run_id VARCHAR, created_at TIMESTAMPTZ,
            PRIMARY KEY (adapter_version, variant, example_id))""",
    "eval_summary": """
        CREATE TABLE IF NOT EXISTS eval_summary (
            adapter_version VARCHAR, variant VARCHAR, category VARCHAR, metric VARCHAR, status VARCHAR,
            reason VARCHAR, n BIGINT, n_scored BIGINT, task_score DOUBLE, task_ci_low DOUBLE, task_ci_high DOUBLE,
            infra_errors BIGINT, teacher_score DOUBLE, transfer_ratio DOUBLE, transfer_target DOUBLE,
            meets_target BOOLEAN, win_rate_vs_teacher DOUBLE, win_ci_low DOUBLE, win_ci_high DOUBLE,
            n_judged BIGINT, wins BIGINT, ties BIGINT, losses BIGINT, consistency_rate DOUBLE, unparseable BIGINT,
            judge_errors BIGINT, win_rate_vs_base DOUBLE, base_win_ci_low DOUBLE, base_win_ci_high DOUBLE,
            base_consistency_rate DOUBLE, base_unparseable BIGINT, latency_p50_s DOUBLE, latency_p95_s DOUBLE,
            tokens_per_s DOUBLE, peak_mem_mb DOUBLE, size_bytes BIGINT, usd_per_1m_tokens DOUBLE,
            cost_vs_teacher DOUBLE, run_id VARCHAR, created_at TIMESTAMPTZ,
            PRIMARY KEY (adapter_version, variant, category))""",
}


class EvalReportConfig(dg.Config):
    max_new_tokens: int = Field(default=256, ge=1, description="generation budget, the same for every variant")
    max_examples_per_category: int | None = Field(default=None, ge=1, description="cap (quickstart); None = all")
    judge_max_tokens: int = Field(default=256, ge=8)
    judge_exports: bool = Field(default=True, description="judge each export against the teacher too")
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


def ensure_tables(store: DuckDBStore) -> None:
    with store.connect() as conn:
        for ddl in DDL.values():
            conn.execute(ddl)


def adapter_version_of(spec: vr.VariantSpec | None) -> str:
    """The merged model's adapter: its metadata's adapter_version, else its parent artifact, else itself."""
    if spec is None or spec.artifact_id is None:
        return "unversioned"
    meta = spec.metadata.get("meta") or {}
    return str(meta.get("adapter_version") or spec.metadata.get("parent_artifact_id") or spec.artifact_id)


def _upstream_skip_reason(context: dg.AssetExecutionContext, asset: str) -> str | None:
    """A 'skipped: ...' note an upstream export recorded in its materialization metadata (e.g. AWQ on CPU)."""
    try:
        ev = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    except Exception:
        return None
    mat = ev.asset_materialization if ev is not None else None
    if mat is None:
        return None
    for key in ("skipped", "status", "reason"):
        v = mat.metadata.get(key)
        text = getattr(v, "value", v)
        if isinstance(text, str) and text.strip().startswith("skipped"):
            return text.strip()
    return None


def select_eval(eval_df: pd.DataFrame, names: list[str], cap: int | None) -> pd.DataFrame:
    df = eval_df[eval_df["category"].isin(names)].drop_duplicates("eval_id")
    df = df.sort_values(["category", "eval_id"])
    if cap:
        df = df.groupby("category", group_keys=False).head(cap)
    return df.reset_index(drop=True)


def _token_counter(spec: vr.VariantSpec | None):
    if spec is None or not spec.path:
        return None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec.path)
    except Exception:
        return None
    return lambda text: len(tok(text or "", add_special_tokens=False)["input_ids"])


@dg.asset(
    group_name="evaluation",
    kinds={"python", "duckdb"},
    code_version="eval-report-v1",
    ins={"eval_set": dg.AssetIn()},
    deps=UPSTREAM,
    description="Teacher vs base vs merged student vs exports: task metrics, both-order judge win rates, "
                "transfer ratios, strata, efficiency, failure analysis; HTML report + eval_results/eval_summary.",
)
def eval_report(context: dg.AssetExecutionContext, config: EvalReportConfig, eval_set: pd.DataFrame,
                store: DuckDBStore, teacher: LLMResource, judge: LLMResource) -> dg.MaterializeResult:
    tasks = load_tasks()
    categories = {c.name: c for c in tasks.categories}
    eval_df = select_eval(eval_set, tasks.names, config.max_examples_per_category)
    if eval_df.empty:
        raise dg.Failure("eval_set is empty: materialize eval_set for the task's categories first")
    run_id = context.run.run_id
    ensure_tables(store)
    log = context.log.info

    specs = vr.discover_variants(store, awq_skip_reason=_upstream_skip_reason(context, "awq_export"),
                                 gguf_kinds=tuple(config.gguf_kinds))
    merged = next((s for s in specs if s.name == MERGED), None)
    version = adapter_version_of(merged)
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

    scored = score_generations(eval_df, gens, categories, token_counter=_token_counter(merged),
                               code_timeout_s=config.code_timeout_s)
    present = set(scored["variant"]) if not scored.empty else set()
    pairs = []
    for v in sorted(present - {TEACHER}):
        if TEACHER in present and (v in (BASE, MERGED) or config.judge_exports):
            pairs.append(pw.make_pairs(scored, v, TEACHER, "vs_teacher"))
    if MERGED in present and BASE in present:
        pairs.append(pw.make_pairs(scored, MERGED, BASE, "vs_base"))
    pairs_df = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(
        columns=["pair_id", "comparison", "candidate", "opponent", "example_id", "category", "prompt",
                 "candidate_response", "opponent_response"])
    with judge.session(store, run_id=run_id, logger=context.log) as js:
        judged = pw.judge_pairs(pairs_df, lambda reqs, cat: js.complete(reqs, category=cat, label=f"eval judge {cat}"),
                                max_tokens=config.judge_max_tokens)

    results = rp.attach_judgments(scored, judged, adapter_version=version, run_id=run_id,
                                  too_short_ratio=config.too_short_ratio)
    summary = rp.summary_table(results, efficiency, categories, adapter_version=version, run_id=run_id,
                               n_boot=config.n_bootstrap)
    with store.connect():  # one transaction: results and summary of a version change together
        store.replace_rows("eval_results", results, "adapter_version = ?", [version])
        store.replace_rows("eval_summary", summary, "adapter_version = ?", [version])
    history = store.query_df("SELECT * FROM eval_summary WHERE variant = ? AND category = ?", [MERGED, OVERALL])
    trend = rp.trend_table(history, version)
    strata = stratified_breakdown(results, n_boot=min(config.n_bootstrap, 1000))
    failures = rp.failure_analysis(results)
    html_text = rp.render_html(results=results, summary=summary, efficiency=efficiency, strata=strata,
                               failures=failures, trend=trend, adapter_version=version, run_id=run_id,
                               teacher_price=price, config=config.model_dump())
    path = rp.write_report(html_text, get_settings().reports, version, run_id)
    md = rp.markdown_summary(summary, efficiency, trend, failures, version, str(path))
    head = rp.headline(summary)

    def num(v):
        return dg.MetadataValue.float(float(v)) if v is not None and v == v else dg.MetadataValue.text("n/a")

    return dg.MaterializeResult(metadata={
        "summary": dg.MetadataValue.md(md),
        "report_path": dg.MetadataValue.path(str(path)),
        "adapter_version": dg.MetadataValue.text(version),
        "win_rate_vs_teacher": num(head.get("win_rate_vs_teacher")),
        "win_rate_vs_base": num(head.get("win_rate_vs_base")),
        "transfer_ratio": num(head.get("transfer_ratio")),
        "consistency_rate": num(head.get("consistency_rate")),
        "examples": dg.MetadataValue.int(int(eval_df["eval_id"].nunique())),
        "variants": dg.MetadataValue.json({r["variant"]: (r["status"] if r["status"] == "ok" else r["reason"])
                                           for r in efficiency.to_dict("records")}),
        "failures": dg.MetadataValue.json(json.loads(failures.groupby("failure_category").size().to_json())
                                          if not failures.empty else {}),
    }, data_version=dg.DataVersion(f"{version}:{run_id[:8]}"))


assets = [eval_report]
