"""Per-example results, the summary table, failure analysis, trend, the headline and the markdown summary.

Pure functions: DataFrames in, DataFrames (or text) out. The HTML report (report_html.py) is rendered from
exactly the rows that go to `eval_results`, so the report and the table cannot disagree.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distill_assets.lib.evaluation import pairwise as pw
from distill_assets.lib.evaluation.metrics import (
    BASE,
    FAIL,
    MERGED,
    NO_RESPONSE,
    OVERALL,
    TEACHER,
    UNPARSED,
    mean_with_ci,
    percentile,
    transfer_ratios,
)

# Iteration strategy by win rate against the teacher.
ITERATION_ADVICE = [
    (0.0, 0.70, "< 70%: significant gap",
     ["More training data (2-5x the current amount)", "Higher quality data (stricter filtering)",
      "Larger student model", "Higher LoRA rank", "Chain-of-thought distillation (if not already used)"]),
    (0.70, 0.85, "70-85%: reasonable but improvable",
     ["Analyze failure cases and generate targeted data", "Include harder examples (Evol-Instruct)",
      "Slightly longer training", "Hyperparameter tuning"]),
    (0.85, 0.95, "85-95%: good result; for most tasks this is success",
     ["Is this good enough for your use case?", "Focus on deployment optimization",
      "Minor targeted improvements for specific failure modes"]),
    (0.95, math.inf, "> 95%: excellent",
     ["Your task is well-suited for distillation", "You might be able to use an even smaller student",
      "Check that evaluation isn't overfitting to the training distribution"]),
]

FAILURE_CATEGORIES = ["no_response", "truncated", "too_short", "format", "wrong_answer", "code_fails_tests",
                      "judge_loss"]

RESULT_COLUMNS = [
    "example_id", "variant", "category", "difficulty", "source", "length_bucket", "prompt", "response", "metric",
    "score", "task_status", "task_detail", "rouge_l", "response_tokens", "finish_reason", "latency_s",
    "generation_error", "judge_verdict", "judge_score", "judge_consistent", "judge_rationale",
    "judge_vs_base_verdict", "judge_vs_base_score", "judge_vs_base_consistent", "failure_category",
    "adapter_version", "run_id", "created_at",
]


def iteration_advice(win_rate: float | None) -> dict:
    if win_rate is None or (isinstance(win_rate, float) and math.isnan(win_rate)):
        return {"band": "no valid judge verdicts", "advice": ["Fix the judge (see parse failures) and rerun"]}
    for lo, hi, band, advice in ITERATION_ADVICE:
        if lo <= win_rate < hi or (hi == math.inf and win_rate >= lo):
            return {"band": band, "advice": advice}
    return {"band": ITERATION_ADVICE[-1][2], "advice": ITERATION_ADVICE[-1][3]}


# --- results --------------------------------------------------------------------------------------------------

def classify_failure(row: dict, teacher_tokens: float | None, too_short_ratio: float) -> str | None:
    """The failure category of one student row, or None when it neither failed its task nor lost."""
    status, verdict = row.get("task_status"), row.get("judge_verdict")
    failed = status in (FAIL, UNPARSED, NO_RESPONSE)
    lost = verdict == pw.LOSS
    if not failed and not lost:
        return None
    if status == NO_RESPONSE:
        return "no_response"
    if row.get("finish_reason") == "length":
        return "truncated"
    n = row.get("response_tokens") or 0
    if teacher_tokens and n < too_short_ratio * teacher_tokens:
        return "too_short"
    if status == UNPARSED:
        return "format"
    if status == FAIL:
        return "code_fails_tests" if row.get("metric") == "pass@1" else "wrong_answer"
    return "judge_loss"


def attach_judgments(scored: pd.DataFrame, judged: pd.DataFrame, *, adapter_version: str, run_id: str,
                     too_short_ratio: float = 0.25, created_at: datetime | None = None) -> pd.DataFrame:
    """eval_results rows: scored generations + the judge verdict vs the teacher (and vs the base for the
    merged student) + the failure category."""
    out = scored.copy()
    for col in ("judge_verdict", "judge_rationale", "judge_vs_base_verdict"):
        out[col] = None
    for col in ("judge_score", "judge_vs_base_score"):
        out[col] = np.nan
    out["judge_consistent"] = None
    out["judge_vs_base_consistent"] = None
    if not judged.empty:
        for comp, prefix in (("vs_teacher", "judge"), ("vs_base", "judge_vs_base")):
            j = judged[judged["comparison"] == comp]
            if j.empty:
                continue
            j = j.assign(_rat=[pw.rationale(r) for r in j.to_dict("records")])
            key = dict(zip(zip(j["candidate"], j["example_id"]), j.to_dict("records")))
            idx = list(zip(out["variant"], out["example_id"]))
            out[f"{prefix}_verdict"] = [key[k]["judge_verdict"] if k in key else out.loc[i, f"{prefix}_verdict"]
                                        for i, k in zip(out.index, idx)]
            out[f"{prefix}_score"] = [key[k]["judge_score"] if k in key else np.nan for k in idx]
            out[f"{prefix}_consistent"] = [key[k]["consistent"] if k in key else None for k in idx]
            if prefix == "judge":
                out["judge_rationale"] = [key[k]["_rat"] if k in key else None for k in idx]
    t_tokens = out[out["variant"] == TEACHER].set_index("example_id")["response_tokens"].to_dict()
    out["failure_category"] = [
        None if r["variant"] in (TEACHER, BASE) else classify_failure(r, t_tokens.get(r["example_id"]), too_short_ratio)
        for r in out.to_dict("records")]
    out["adapter_version"] = adapter_version
    out["run_id"] = run_id
    out["created_at"] = created_at or datetime.now(UTC)
    for c in RESULT_COLUMNS:
        if c not in out.columns:
            out[c] = None
    return out[RESULT_COLUMNS]


def _judged_frame(results: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The judge columns of eval_results in the shape pairwise.win_rates expects."""
    r = results[results[f"{prefix}_verdict"].notna()]
    return pd.DataFrame({"variant": r["variant"], "category": r["category"],
                         "judge_verdict": r[f"{prefix}_verdict"], "judge_score": r[f"{prefix}_score"].astype(float),
                         "consistent": r[f"{prefix}_consistent"]})


def summary_table(results: pd.DataFrame, efficiency: pd.DataFrame, categories: dict[str, Any], *,
                  adapter_version: str, run_id: str, n_boot: int = 2000,
                  created_at: datetime | None = None) -> pd.DataFrame:
    """eval_summary: one row per variant x category (and '__all__'); skipped variants get one '__all__' row."""
    created_at = created_at or datetime.now(UTC)
    transfer = transfer_ratios(results, categories)
    tkey = {(r.variant, r.category): r for r in transfer.itertuples(index=False)}
    jt = pw.win_rates(_judged_frame(results, "judge"), ["variant", "category"], n_boot=n_boot)
    jt_all = pw.win_rates(_judged_frame(results, "judge"), ["variant"], n_boot=n_boot).assign(category=OVERALL)
    jb = pw.win_rates(_judged_frame(results, "judge_vs_base"), ["variant", "category"], n_boot=n_boot)
    jb_all = pw.win_rates(_judged_frame(results, "judge_vs_base"), ["variant"], n_boot=n_boot).assign(category=OVERALL)
    jkey = {(r["variant"], r["category"]): r for r in pd.concat([jt, jt_all]).to_dict("records")}
    bkey = {(r["variant"], r["category"]): r for r in pd.concat([jb, jb_all]).to_dict("records")}
    ekey = {r["variant"]: r for r in efficiency.to_dict("records")} if not efficiency.empty else {}
    rows = []
    for variant, vg in results.groupby("variant", sort=False):
        groups = [(c, g) for c, g in vg.groupby("category", sort=True)] + [(OVERALL, vg)]
        for cat, g in groups:
            task = mean_with_ci(g["score"], n_boot=n_boot)
            tr = tkey.get((variant, cat))
            j, b, e = jkey.get((variant, cat), {}), bkey.get((variant, cat), {}), ekey.get(variant, {})
            lat = g["latency_s"].astype(float)
            tok_s = (float(g["response_tokens"].sum()) / float(lat.sum())) if lat.notna().any() and lat.sum() > 0 \
                else np.nan
            metrics = sorted(g["metric"].dropna().unique())
            rows.append({
                "adapter_version": adapter_version, "variant": variant, "category": cat,
                "metric": metrics[0] if len(metrics) == 1 else "mixed", "status": e.get("status", "ok"),
                "reason": e.get("reason"), "n": int(len(g)), "n_scored": task["n"],
                "task_score": task["mean"], "task_ci_low": task["ci_low"], "task_ci_high": task["ci_high"],
                "infra_errors": int((g["task_status"] == "infra_error").sum()),
                "teacher_score": getattr(tr, "teacher_score", np.nan) if tr is not None else np.nan,
                "transfer_ratio": getattr(tr, "transfer_ratio", np.nan) if tr is not None else np.nan,
                "transfer_target": getattr(tr, "target", np.nan) if tr is not None else np.nan,
                "meets_target": bool(tr.meets_target) if tr is not None else None,
                "win_rate_vs_teacher": j.get("win_rate", np.nan), "win_ci_low": j.get("win_ci_low", np.nan),
                "win_ci_high": j.get("win_ci_high", np.nan), "n_judged": j.get("n_valid", 0),
                "wins": j.get("wins", 0), "ties": j.get("ties", 0), "losses": j.get("losses", 0),
                "consistency_rate": j.get("consistency_rate", np.nan), "unparseable": j.get("unparseable", 0),
                "judge_errors": j.get("judge_errors", 0),
                "win_rate_vs_base": b.get("win_rate", np.nan), "base_win_ci_low": b.get("win_ci_low", np.nan),
                "base_win_ci_high": b.get("win_ci_high", np.nan),
                "base_consistency_rate": b.get("consistency_rate", np.nan),
                "base_unparseable": b.get("unparseable", 0),
                "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95), "tokens_per_s": tok_s,
                "peak_mem_mb": e.get("peak_mem_mb", np.nan), "size_bytes": e.get("size_bytes"),
                "usd_per_1m_tokens": e.get("usd_per_1m_tokens", np.nan),
                "cost_vs_teacher": e.get("cost_vs_teacher", np.nan),
                "run_id": run_id, "created_at": created_at,
            })
    present = set(results["variant"]) if not results.empty else set()
    for e in (efficiency.to_dict("records") if not efficiency.empty else []):
        if e["variant"] not in present:
            rows.append({"adapter_version": adapter_version, "variant": e["variant"], "category": OVERALL,
                         "metric": None, "status": e["status"], "reason": e["reason"], "n": 0, "n_scored": 0,
                         "run_id": run_id, "created_at": created_at})
    out = pd.DataFrame(rows)
    for c in SUMMARY_COLUMNS:
        if c not in out.columns:
            out[c] = None
    out = out[SUMMARY_COLUMNS]
    for c in ("size_bytes", "n_judged", "wins", "ties", "losses", "unparseable", "judge_errors",
              "base_unparseable", "infra_errors"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    return out


SUMMARY_COLUMNS = [
    "adapter_version", "variant", "category", "metric", "status", "reason", "n", "n_scored", "task_score",
    "task_ci_low", "task_ci_high", "infra_errors", "teacher_score", "transfer_ratio", "transfer_target",
    "meets_target", "win_rate_vs_teacher", "win_ci_low", "win_ci_high", "n_judged", "wins", "ties", "losses",
    "consistency_rate", "unparseable", "judge_errors", "win_rate_vs_base", "base_win_ci_low", "base_win_ci_high",
    "base_consistency_rate", "base_unparseable", "latency_p50_s", "latency_p95_s", "tokens_per_s", "peak_mem_mb",
    "size_bytes", "usd_per_1m_tokens", "cost_vs_teacher", "run_id", "created_at",
]


def failure_analysis(results: pd.DataFrame) -> pd.DataFrame:
    """Every student loss and failed example, with the prompt, both responses and the judge's rationale."""
    t = results[results["variant"] == TEACHER].set_index("example_id")["response"]
    f = results[results["failure_category"].notna()].copy()
    if f.empty:
        return pd.DataFrame(columns=["variant", "category", "failure_category", "example_id", "difficulty", "prompt",
                                     "response", "teacher_response", "task_status", "task_detail", "judge_verdict",
                                     "judge_rationale"])
    f["teacher_response"] = f["example_id"].map(t)
    order = {c: i for i, c in enumerate(FAILURE_CATEGORIES)}
    f["_o"] = f["failure_category"].map(order)
    return f.sort_values(["variant", "_o", "category", "example_id"])[
        ["variant", "category", "failure_category", "example_id", "difficulty", "prompt", "response",
         "teacher_response", "task_status", "task_detail", "judge_verdict", "judge_rationale"]].reset_index(drop=True)


def trend_table(history: pd.DataFrame, adapter_version: str, variant: str = MERGED) -> pd.DataFrame:
    """The overall numbers of `variant` for every adapter version evaluated so far (oldest first), with the
    change against the previous version."""
    cols = ["adapter_version", "evaluated_at", "task_score", "transfer_ratio", "win_rate_vs_teacher",
            "win_rate_vs_base"]
    if history is None or history.empty:
        return pd.DataFrame(columns=cols)
    h = history[(history["variant"] == variant) & (history["category"] == OVERALL)].copy()
    if h.empty:
        return pd.DataFrame(columns=cols)
    h = (h.sort_values("created_at").groupby("adapter_version", as_index=False).last()
         .sort_values("created_at").rename(columns={"created_at": "evaluated_at"}))
    # the current version always last, even when an older version was re-evaluated later
    h = pd.concat([h[h["adapter_version"] != adapter_version], h[h["adapter_version"] == adapter_version]])
    h = h[cols].reset_index(drop=True)
    for c in cols[2:]:
        h[f"delta_{c}"] = pd.to_numeric(h[c], errors="coerce").diff()
    return h


# --- headline and markdown -------------------------------------------------------------------------------

def fmt(v: Any, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{100 * v:.1f}%" if pct else f"{v:.{digits}f}"
    return str(v)


def headline(summary: pd.DataFrame, variant: str = MERGED) -> dict:
    row = summary[(summary["variant"] == variant) & (summary["category"] == OVERALL)]
    if row.empty:
        return {}
    r = row.iloc[0]
    keys = ["task_score", "transfer_ratio", "meets_target", "win_rate_vs_teacher", "win_ci_low", "win_ci_high",
            "win_rate_vs_base", "base_win_ci_low", "base_win_ci_high", "consistency_rate", "unparseable",
            "judge_errors", "n"]
    return {k: (None if pd.isna(r[k]) else (r[k].item() if hasattr(r[k], "item") else r[k])) for k in keys}


def markdown_summary(summary: pd.DataFrame, efficiency: pd.DataFrame, trend: pd.DataFrame, failures: pd.DataFrame,
                     adapter_version: str, report_path: str | None = None) -> str:
    head = headline(summary)
    advice = iteration_advice(head.get("win_rate_vs_teacher"))
    lines = [f"**adapter** `{adapter_version}`",
             f"- win rate vs teacher: **{fmt(head.get('win_rate_vs_teacher'), True)}** "
             f"(CI {fmt(head.get('win_ci_low'), True)}–{fmt(head.get('win_ci_high'), True)}), "
             f"consistency {fmt(head.get('consistency_rate'), True)}, unparseable {fmt(head.get('unparseable'))}",
             f"- win rate vs base: **{fmt(head.get('win_rate_vs_base'), True)}** "
             f"(CI {fmt(head.get('base_win_ci_low'), True)}–{fmt(head.get('base_win_ci_high'), True)})",
             f"- transfer ratio: **{fmt(head.get('transfer_ratio'), True)}**, all targets met: "
             f"{fmt(head.get('meets_target'))}",
             f"- advice ({advice['band']}): " + "; ".join(advice["advice"]), ""]
    ok = summary[(summary["category"] == OVERALL)]
    cols = ["variant", "status", "task_score", "transfer_ratio", "win_rate_vs_teacher", "latency_p50_s",
            "tokens_per_s", "usd_per_1m_tokens"]
    t = ok[cols].copy()
    for c in cols[2:]:
        t[c] = [fmt(v, pct=c in ("transfer_ratio", "win_rate_vs_teacher")) for v in t[c]]
    lines.append(t.to_markdown(index=False))
    if len(trend) > 1:
        prev, cur = trend.iloc[-2], trend.iloc[-1]
        lines.append(f"\nvs previous `{prev['adapter_version']}`: win rate vs teacher "
                     f"{fmt(prev['win_rate_vs_teacher'], True)} → {fmt(cur['win_rate_vs_teacher'], True)}, transfer "
                     f"{fmt(prev['transfer_ratio'], True)} → {fmt(cur['transfer_ratio'], True)}")
    if not failures.empty:
        counts = failures.groupby("failure_category").size().sort_values(ascending=False)
        lines.append("\nfailures: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if report_path:
        lines.append(f"\nreport: `{report_path}`")
    return "\n".join(lines)


def write_report(html_text: str, reports_dir: Path, adapter_version: str, run_id: str) -> Path:
    reports_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in adapter_version)[:64]
    path = reports_dir / f"eval_{safe}_{stamp}_{run_id[:8]}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html_text, encoding="utf-8")
    tmp.replace(path)  # never a half-written report
    (reports_dir / "eval_latest.html").write_text(html_text, encoding="utf-8")
    return path


__all__ = ["iteration_advice", "classify_failure", "attach_judgments", "summary_table", "failure_analysis",
           "trend_table", "fmt", "headline", "markdown_summary", "write_report"]
