"""The steps of one evaluation run between generation and metadata: eval rows, judge pairs, the stored tables
and the written report. `eval_report` (defs/evaluation.py) calls them in order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from distill_assets.lib.evaluation import pairwise as pw
from distill_assets.lib.evaluation import report as rp
from distill_assets.lib.evaluation.change import change_markdown
from distill_assets.lib.evaluation.metrics import BASE, MERGED, OVERALL, TEACHER, stratified_breakdown
from distill_assets.lib.evaluation.report_html import render_html
from distill_assets.lib.evaluation.summary import judge_signals
from distill_assets.lib.evaluation.variants import VariantSpec
from resources.store import DuckDBStore

PAIR_COLUMNS = ["pair_id", "comparison", "candidate", "opponent", "example_id", "category", "prompt",
                "candidate_response", "opponent_response"]


def select_eval(eval_df: pd.DataFrame, names: list[str], cap: int | None,
                uncapped: list[str] = ()) -> pd.DataFrame:
    """The eval items of `names`, at most `cap` per category except the `uncapped` ones (all of theirs)."""
    df = eval_df[eval_df["category"].isin(names)].drop_duplicates("eval_id")
    df = df.sort_values(["category", "eval_id"])
    if cap:
        capped = df[~df["category"].isin(list(uncapped))].groupby("category", group_keys=False).head(cap)
        df = pd.concat([capped, df[df["category"].isin(list(uncapped))]]).sort_values(["category", "eval_id"])
    return df.reset_index(drop=True)


def token_counter(spec: VariantSpec | None) -> Callable[[str], int] | None:
    """Response length in the merged student's tokens; None (word count fallback) when it cannot load."""
    if spec is None or not spec.path:
        return None
    try:
        from transformers import AutoTokenizer  # deferred: heavy optional dependency

        tok = AutoTokenizer.from_pretrained(spec.path)
    except Exception:
        return None
    return lambda text: len(tok(text or "", add_special_tokens=False)["input_ids"])


def judged_categories(categories: dict, scope: str) -> set[str]:
    """The categories the pairwise judge rates: all, or only those without an exact verifier (open_ended)."""
    if scope not in ("all", "open_ended"):
        raise ValueError(f"judge_scope must be 'all' or 'open_ended', got {scope!r}")
    return {name for name, cat in categories.items() if scope == "all" or cat.verify == "none"}


def judge_pair_frame(scored: pd.DataFrame, judge_exports: bool, categories: set[str] | None = None) -> pd.DataFrame:
    """Every pair to judge: each student variant vs the teacher (exports only when `judge_exports`), and the
    merged student vs the base; only the rows of `categories` when given."""
    if categories is not None and not scored.empty:
        scored = scored[scored["category"].isin(sorted(categories))]
    present = set(scored["variant"]) if not scored.empty else set()
    pairs = []
    for v in sorted(present - {TEACHER}):
        if TEACHER in present and (v in (BASE, MERGED) or judge_exports):
            pairs.append(pw.make_pairs(scored, v, TEACHER, "vs_teacher"))
    if MERGED in present and BASE in present:
        pairs.append(pw.make_pairs(scored, MERGED, BASE, "vs_base"))
    return pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(columns=PAIR_COLUMNS)


def store_results(store: DuckDBStore, results: pd.DataFrame, summary: pd.DataFrame, version: str) -> None:
    """Replace this adapter version's eval_results and eval_summary rows, in one transaction."""
    def replace(conn) -> None:  # results and summary of a version change together
        store.replace_rows("eval_results", results, "adapter_version = ?", [version])
        store.replace_rows("eval_summary", summary, "adapter_version = ?", [version])

    store.transact(replace)


def write_eval_report(store: DuckDBStore, *, results: pd.DataFrame, summary: pd.DataFrame,
                      efficiency: pd.DataFrame, version: str, run_id: str, teacher_price: dict, config: dict,
                      reports_dir: Path, n_bootstrap: int) -> dict:
    """Trend, strata and failure analysis; the HTML report on disk. Returns path, markdown (the summary and the
    change table alone), headline, failures."""
    history = store.query_df("SELECT * FROM eval_summary WHERE variant = ? AND category = ?", [MERGED, OVERALL])
    trend = rp.trend_table(history, version)
    strata = stratified_breakdown(results, n_boot=min(n_bootstrap, 1000), judge_signals=judge_signals(summary))
    failures = rp.failure_analysis(results)
    html_text = render_html(results=results, summary=summary, efficiency=efficiency, strata=strata,
                            failures=failures, trend=trend, adapter_version=version, run_id=run_id,
                            teacher_price=teacher_price, config=config)
    path = rp.write_report(html_text, reports_dir, version, run_id)
    return {"path": path, "markdown": rp.markdown_summary(summary, efficiency, trend, failures, version, str(path)),
            "change_markdown": change_markdown(summary), "headline": rp.headline(summary), "failures": failures}
